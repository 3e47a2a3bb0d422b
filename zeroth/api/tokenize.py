"""Step 2, tokenize: validated inputs become token ids of the model, checked against its limits.

Strings are tokenised in one call; native ids pass through; tiktoken ids (what LangChain sends
for OpenAI model names) are decoded to text and re-tokenised with the model's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zeroth.api.errors import bad_request
from zeroth.api.schemas import EmbeddingRequest
from zeroth.registry import ServedModel
from zeroth.tiktoken_ids import decode_to_texts
from zeroth.tokenizer import truncate


@dataclass(frozen=True, slots=True)
class Tokens:
    ids: list[list[int]]
    # Usage as OpenAI reports it: tokens actually embedded, counted with the model's tokenizer.
    count: int
    # What the per-request token limit counts: `count`, except for tiktoken ids, where it is
    # the ids as sent (see tokenize).
    limited: int


def tokenize(req: EmbeddingRequest, model: ServedModel) -> Tokens:
    embedder = model.embedder
    if req.texts is not None:
        return _fit(embedder.tokenize(req.texts), model)
    rows = req.ids or []
    if model.encoding is None:
        _check_range(rows, embedder.vocab_size, "this model's vocabulary")
        return _fit(rows, model)
    _check_range(rows, model.encoding.n_vocab, model.encoding.name)
    # The limits count the encoding's ids, as OpenAI counts them: clients size their chunks
    # (LangChain: 8191 ids) and batches (300,000 ids) by them, and our tokenizer may need 10-30%
    # more tokens for the same text, which would refuse what OpenAI takes. What a row decodes
    # to is bounded (cl100k_base's longest token is 128 bytes), so the work stays bounded.
    sent = _fit(rows, model)
    texts = decode_to_texts(model.encoding, sent.ids)
    if texts is None:
        raise bad_request(
            f"'input' holds ids that are not tokens of {model.encoding.name}", param="input"
        )
    ids = embedder.tokenize(texts)
    _check_not_empty(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
    return Tokens(ids, sum(map(len, ids)), sent.limited)


def _fit(ids: list[list[int]], model: ServedModel) -> Tokens:
    """`ids` within the model's max_tokens per input: an error, or truncated (on_overflow)."""
    limit = model.entry.max_tokens
    ids, lengths = truncate(ids, limit)
    _check_not_empty(lengths)
    longest = int(lengths.max())
    if longest > limit and model.entry.on_overflow == "error":
        raise bad_request(
            f"'input[{int(lengths.argmax())}]' has {longest} tokens, more than this model's "
            f"maximum of {limit} tokens per input; shorten it or split it",
            param="input",
        )
    count = int(np.minimum(lengths, limit).sum())
    return Tokens(ids, count, count)


def _check_not_empty(lengths: np.ndarray) -> None:
    if not lengths.min():
        raise bad_request(
            f"'input[{int(lengths.argmin())}]' has no tokens after tokenization", param="input"
        )


def _check_range(rows: list[list[int]], size: int, what: str) -> None:
    low = min(map(min, rows))
    high = max(map(max, rows))
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise bad_request(
            f"'input' holds token id {bad}, outside [0, {size}) of {what}", param="input"
        )
