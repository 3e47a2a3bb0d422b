"""Text -> a model's token ids, by the fastest route that gives the tokenizer's own ids.

Routes, first that applies: the tokenizer's exact tiktoken twin (zeroth/bpe_twin.py: byte-level
BPE tokenizers, any text), the ASCII route of zeroth/fast_bpe.py (byte-level BPE whose merges
tiktoken cannot order), `tokenizers` itself. No torch here: benchmarks load this alone.
ZEROTH_FAST_TOKENIZER=0 keeps to `tokenizers`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer

from zeroth.bpe_twin import exact_twin
from zeroth.fast_bpe import FastByteLevelBPE

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
    ):
        self.tokenizer = tokenizer
        self.tokenizer_json = tokenizer_json
        self.add_special_tokens = add_special_tokens
        # twin_checked: the manifest's record of the vocabulary check done at extraction.
        self.twin, self.twin_why = exact_twin(
            tokenizer_json, add_special_tokens, self.tokenize_plain, twin_checked
        )
        self.fast_bpe = None if self.twin else FastByteLevelBPE.build(tokenizer, add_special_tokens)
        # Texts this process still tokenises both ways to check the twin on real input.
        self._unchecked = CROSS_CHECK_TEXTS if self.twin else 0

    @classmethod
    def from_file(
        cls,
        tokenizer_json: str | Path,
        add_special_tokens: bool,
        twin_checked: Mapping[str, str] | None = None,
    ) -> TextTokenizer:
        path = Path(tokenizer_json)
        return cls(load_tokenizer(path), path, add_special_tokens, twin_checked)

    @property
    def route(self) -> str:
        """Which route tokenize takes, and why (for logs)."""
        if self.twin is not None:
            return self.twin_why
        if self.fast_bpe is not None:
            return f"fast byte-level BPE for ASCII text ({self.twin_why})"
        return f"tokenizers ({self.twin_why})"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if self.twin is not None:
            return self._checked(texts, self.twin.encode(texts, self.tokenize_plain))
        if self.fast_bpe is not None:
            return self.fast_bpe.encode(texts)
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
