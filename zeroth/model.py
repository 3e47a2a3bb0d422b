"""StaticEmbedder: a folded table + tokenizer, ready to turn text or ids into vectors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer

from zeroth.bpe_twin import exact_twin
from zeroth.checkpoint import CENTER, COMPONENTS, TOKEN_WEIGHTS, Checkpoint
from zeroth.fast_bpe import FastByteLevelBPE
from zeroth.fold import FoldedTable, fold, rms_normalise
from zeroth.manifest import Manifest
from zeroth.pooling import OpenVINOPooler, Pooler, TorchPooler, l2_normalise

log = logging.getLogger(__name__)

# Texts each process tokenises both ways before it relies on the twin alone.
CROSS_CHECK_TEXTS = 256

Backend = Literal["torch", "openvino"]
Pooling = Literal["mean", "max"]


def folded_table(ckpt: Checkpoint, pooling: Pooling = "mean") -> FoldedTable:
    """The serving table of a checkpoint. Max pooling ignores token weights."""
    m = ckpt.manifest
    normed = rms_normalise(ckpt.embed, ckpt.norm_weight, m.norm.eps, m.embed_scale, m.norm.offset)
    weights = ckpt.optional(TOKEN_WEIGHTS) if pooling == "mean" else None
    return fold(normed, weights, ckpt.optional(CENTER), ckpt.optional(COMPONENTS))


def load_tokenizer(path: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    # Limits are the server's business; a saved padding/truncation setting must not leak in.
    tok.no_padding()
    tok.no_truncation()
    return tok


class StaticEmbedder:
    def __init__(self, manifest: Manifest, tokenizer: Tokenizer, pooler: Pooler, path: Path):
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.pooler = pooler
        self.path = path
        self.dim = manifest.hidden_size
        self.vocab_size = manifest.vocab_size
        self.add_special_tokens = manifest.tokenizer.add_special_tokens
        # The tokenizer's ids, several times faster: its tiktoken twin (zeroth/bpe_twin.py) where
        # one exists and agrees; else, for ASCII text, the route of zeroth/fast_bpe.py.
        self.twin, self.twin_why = exact_twin(
            path / manifest.tokenizer.file, self.add_special_tokens, self.tokenize_plain
        )
        self.fast_tokenizer = (
            None if self.twin else FastByteLevelBPE.build(tokenizer, self.add_special_tokens)
        )
        # Texts this process still tokenises both ways to check the twin on real input.
        self._unchecked = CROSS_CHECK_TEXTS if self.twin else 0

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        backend: Backend = "torch",
        device: str = "cpu",
        pooling: Pooling = "mean",
    ) -> StaticEmbedder:
        path = Path(path)
        ckpt = Checkpoint.from_pretrained(path)
        manifest = ckpt.manifest
        if backend == "openvino":
            if manifest.openvino is None:
                raise ValueError(f"{path}: no OpenVINO IR (extract with --openvino)")
            if pooling != "mean":
                raise ValueError("the OpenVINO backend supports mean pooling only")
            pooler: Pooler = OpenVINOPooler(path / manifest.openvino.xml)
        else:
            pooler = TorchPooler(folded_table(ckpt, pooling), device, pooling)
        tokenizer = load_tokenizer(path / manifest.tokenizer.file)
        return cls(manifest, tokenizer, pooler, path)

    @property
    def tokenizer_route(self) -> str:
        """Which route tokenize takes, and why (for logs)."""
        if self.twin is not None:
            return self.twin_why
        if self.fast_tokenizer is not None:
            return f"fast byte-level BPE for ASCII text ({self.twin_why})"
        return f"tokenizers ({self.twin_why})"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if self.twin is not None:
            return self._checked(texts, self.twin.encode(texts, self.tokenize_plain))
        if self.fast_tokenizer is not None:
            return self.fast_tokenizer.encode(texts)
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
        log.error("%s: the tiktoken twin differs from the tokenizer; not using it", self.path)
        self.twin, self.twin_why = None, "the tiktoken twin differed on a text"
        return self.tokenize_plain(texts)

    def tokenize_plain(self, texts: Sequence[str]) -> list[list[int]]:
        """The tokenizer's own pipeline (the reference for the fast route)."""
        encodings = self.tokenizer.encode_batch_fast(
            list(texts), add_special_tokens=self.add_special_tokens
        )
        return [e.ids for e in encodings]

    def embed_ids(self, ids: Sequence[Sequence[int]], normalize: bool = True) -> np.ndarray:
        """One vector per non-empty id list; ids must lie in [0, vocab_size)."""
        flat, offsets = flatten(ids)
        if normalize:
            return l2_normalise(self.pooler.pool(flat, offsets, direction_only=True))
        return self.pooler.pool(flat, offsets)

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        return self.embed_ids(self.tokenize(texts), normalize)


def flatten(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id sequences (lists, or int arrays) -> (every id end to end as int64, where each
    sequence starts): the ragged layout embedding_bag takes, with no padding."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    if rows and isinstance(rows[0], np.ndarray):
        flat = np.concatenate(rows).astype(np.int64, copy=False)
    else:
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return flat, offsets


def reference_embed(ckpt: Checkpoint, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Straightforward, unfolded computation: the oracle the fast path is tested against."""
    m = ckpt.manifest
    w = ckpt.optional(TOKEN_WEIGHTS)
    c = ckpt.optional(CENTER)
    u = ckpt.optional(COMPONENTS)
    out = []
    for row in ids:
        idx = torch.tensor(row, dtype=torch.long)
        x = rms_normalise(
            ckpt.embed[idx], ckpt.norm_weight, m.norm.eps, m.embed_scale, m.norm.offset
        )
        a = torch.ones(len(row)) if w is None else w.to(torch.float32)[idx]
        v = (a[:, None] * x).sum(0) / a.sum()
        if c is not None:
            v = v - c.float()
        if u is not None and u.numel():
            v = v - (u.float() @ v) @ u.float()
        out.append(v / v.norm().clamp_min(1e-12))
    return torch.stack(out).numpy()
