"""Text -> a model's token ids, by the fastest route that gives the tokenizer's own ids.

Routes: the tokenizer's exact tiktoken twin (zeroth/bpe_twin.py: byte-level BPE tokenizers,
any text) where it has one, else `tokenizers` itself. No torch here: benchmarks load this alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from zeroth.bpe_twin import exact_twin

log = logging.getLogger(__name__)

# Texts each process tokenises both ways before it relies on the twin alone.
CROSS_CHECK_TEXTS = 256


def load_tokenizer(path: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    # Limits are the server's business; a saved padding/truncation setting must not leak in.
    tok.no_padding()
    tok.no_truncation()
    return tok


class TextTokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        tokenizer_json: Path,
        add_special_tokens: bool,
        twin_checked: Mapping[str, str] | None = None,
        use_twin: bool = True,
    ):
        self.tokenizer = tokenizer
        self.tokenizer_json = tokenizer_json
        self.add_special_tokens = add_special_tokens
        # twin_checked: the manifest's record of the vocabulary check done at extraction.
        # use_twin=False: `tokenizers` alone (the reference, for benchmarks and tests).
        if use_twin:
            self.twin, self.twin_why = exact_twin(
                tokenizer_json, add_special_tokens, self.tokenize_plain, twin_checked
            )
        else:
            self.twin, self.twin_why = None, "the tiktoken twin was not asked for"
        # Texts this process still tokenises both ways to check the twin on real input.
        self._unchecked = CROSS_CHECK_TEXTS if self.twin else 0

    @classmethod
    def from_file(
        cls,
        tokenizer_json: str | Path,
        add_special_tokens: bool,
        twin_checked: Mapping[str, str] | None = None,
        use_twin: bool = True,
    ) -> TextTokenizer:
        path = Path(tokenizer_json)
        return cls(load_tokenizer(path), path, add_special_tokens, twin_checked, use_twin)

    @property
    def route(self) -> str:
        """Which route tokenize takes, and why (for logs)."""
        if self.twin is not None:
            return self.twin_why
        return f"tokenizers ({self.twin_why})"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if self.twin is not None:
            return self._checked(texts, self.twin.encode(texts, self.tokenize_plain))
        return self.tokenize_plain(texts)

    def tokenize_arrays(self, texts: Sequence[str]) -> list[Sequence[int]]:
        """The same ids, as uint32 arrays where the twin gives them: for bulk callers, whose
        long documents would otherwise cost a Python int per token."""
        if self.twin is not None:
            return self._checked(texts, self.twin.encode_arrays(texts, self.tokenize_plain))
        return self.tokenize(texts)

    def _checked(self, texts: Sequence[str], ids: list[Sequence[int]]) -> list[Sequence[int]]:
        """The first texts a process sees are also tokenised by the tokenizer itself; should
        the twin ever differ, it is dropped for good (logged) and the tokenizer answers."""
        if self._unchecked <= 0:
            return ids
        n = min(len(texts), self._unchecked)
        self._unchecked -= n
        want = self.tokenize_plain(texts[:n])
        if want == [row if isinstance(row, list) else row.tolist() for row in ids[:n]]:
            return ids
        log.error(
            "%s: the tiktoken twin differs from the tokenizer; not using it", self.tokenizer_json
        )
        self.twin, self.twin_why = None, "the tiktoken twin differed on a text"
        return self.tokenize_plain(texts)

    def tokenize_plain(self, texts: Sequence[str]) -> list[list[int]]:
        """The tokenizer's own pipeline (the reference for the fast route)."""
        encodings = self.tokenizer.encode_batch_fast(
            list(texts), add_special_tokens=self.add_special_tokens
        )
        return [e.ids for e in encodings]


def truncate(rows: list[Sequence[int]], limit: int) -> tuple[list[Sequence[int]], np.ndarray]:
    """Each row cut to at most `limit` ids, and every row's length before the cut (the server's
    `on_overflow: truncate` and the indexer both cut here)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    if lengths.size and lengths.max() > limit:
        rows = [row[:limit] if len(row) > limit else row for row in rows]
    return rows, lengths
