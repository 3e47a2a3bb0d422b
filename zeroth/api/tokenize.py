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


def tokenize(req: EmbeddingRequest, model: ServedModel) -> Tokens:
    embedder = model.embedder
    if req.texts is not None:
        ids = embedder.tokenize(req.texts)
    else:
        rows = req.ids or []
        if model.encoding is not None:
            _check_range(rows, model.encoding.n_vocab, model.encoding.name)
            texts = decode_to_texts(model.encoding, rows)
            if texts is None:
                raise bad_request(
                    f"'input' holds ids that are not tokens of {model.encoding.name}",
                    param="input",
                )
            ids = embedder.tokenize(texts)
        else:
            _check_range(rows, embedder.vocab_size, "this model's vocabulary")
            ids = rows
    limit = model.entry.max_tokens
    ids, lengths = truncate(ids, limit)
    if not lengths.min():
        raise bad_request(
            f"'input[{int(lengths.argmin())}]' has no tokens after tokenization", param="input"
        )
    longest = int(lengths.max())
    if longest > limit and model.entry.on_overflow == "error":
        raise bad_request(
            f"'input[{int(lengths.argmax())}]' has {longest} tokens, more than this model's "
            f"maximum of {limit} tokens per input; shorten it or split it",
            param="input",
        )
    return Tokens(ids, int(np.minimum(lengths, limit).sum()))


def _check_range(rows: list[list[int]], size: int, what: str) -> None:
    low = min(map(min, rows))
    high = max(map(max, rows))
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise bad_request(
            f"'input' holds token id {bad}, outside [0, {size}) of {what}", param="input"
        )
