"""Step 2, tokenize: validated inputs become token ids of the model, checked against its limits.

Strings are tokenised in one call; native ids pass through; tiktoken ids (what LangChain sends
for OpenAI model names) are decoded to text and re-tokenised with the model's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from zeroth.api.errors import bad_request
from zeroth.api.schemas import EmbeddingRequest
from zeroth.registry import ServedModel
from zeroth.tiktoken_ids import decode_to_texts


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
    lengths = list(map(len, ids))
    if not min(lengths):
        raise bad_request(
            f"'input[{lengths.index(0)}]' has no tokens after tokenization", param="input"
        )
    limit = model.entry.max_tokens
    longest = max(lengths)
    if longest > limit:
        if model.entry.on_overflow == "error":
            i = lengths.index(longest)
            raise bad_request(
                f"'input[{i}]' has {longest} tokens, more than this model's maximum of "
                f"{limit} tokens per input; shorten it or split it",
                param="input",
            )
        ids = [row[:limit] if len(row) > limit else row for row in ids]
        return Tokens(ids, sum(min(n, limit) for n in lengths))
    return Tokens(ids, sum(lengths))


def _check_range(rows: list[list[int]], size: int, what: str) -> None:
    low = min(map(min, rows))
    high = max(map(max, rows))
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise bad_request(
            f"'input' holds token id {bad}, outside [0, {size}) of {what}", param="input"
        )
