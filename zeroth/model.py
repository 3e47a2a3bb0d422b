"""StaticEmbedder: a folded table + tokenizer, ready to turn text or ids into vectors."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer

from zeroth.checkpoint import CENTER, COMPONENTS, TOKEN_WEIGHTS, Checkpoint
from zeroth.fold import FoldedTable, fold
from zeroth.manifest import Manifest
from zeroth.pooling import OpenVINOPooler, Pooler, TorchPooler, l2_normalise
from zeroth.tokenizer import TextTokenizer

Backend = Literal["torch", "openvino"]
Pooling = Literal["mean", "max"]


def folded_table(ckpt: Checkpoint, pooling: Pooling = "mean") -> FoldedTable:
    """The serving table of a checkpoint. Max pooling ignores token weights."""
    weights = ckpt.optional(TOKEN_WEIGHTS) if pooling == "mean" else None
    return fold(ckpt.token_rows(), weights, ckpt.optional(CENTER), ckpt.optional(COMPONENTS))


class StaticEmbedder:
    def __init__(self, manifest: Manifest, text: TextTokenizer, pooler: Pooler, path: Path):
        self.manifest = manifest
        # Text -> ids (zeroth/tokenizer.py).
        self.text = text
        self.pooler = pooler
        self.path = path
        self.dim = manifest.hidden_size
        self.vocab_size = manifest.vocab_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        backend: Backend = "torch",
        device: str = "cpu",
        pooling: Pooling = "mean",
        use_twin: bool = True,
    ) -> StaticEmbedder:
        """`use_twin=False` tokenises with `tokenizers` alone (the reference route)."""
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
        spec = manifest.tokenizer
        text = TextTokenizer.from_file(
            path / spec.file, spec.add_special_tokens, spec.tiktoken_twin, use_twin
        )
        return cls(manifest, text, pooler, path)

    @property
    def tokenizer(self) -> Tokenizer:
        """The `tokenizers` object behind `text`."""
        return self.text.tokenizer

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.text.tokenize(texts)

    def embed_ids(
        self, ids: Sequence[Sequence[int]], normalize: bool = True, dims: int | None = None
    ) -> np.ndarray:
        """One vector per non-empty id list (ids in [0, vocab_size)), cut to its first `dims`
        components (Matryoshka-style, as OpenAI's `dimensions`), then L2-normalised once."""
        flat, offsets = flatten(ids)
        if not normalize:
            return self.pooler.pool(flat, offsets)[:, :dims]
        vectors = self.pooler.pool(flat, offsets, direction_only=True)
        if dims is not None and dims < vectors.shape[1]:
            vectors = vectors[:, :dims]
        return l2_normalise(vectors)

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
    w = ckpt.optional(TOKEN_WEIGHTS)
    c = ckpt.optional(CENTER)
    u = ckpt.optional(COMPONENTS)
    out = []
    for row in ids:
        idx = torch.tensor(row, dtype=torch.long)
        x = ckpt.token_rows(idx)
        a = torch.ones(len(row)) if w is None else w.to(torch.float32)[idx]
        v = (a[:, None] * x).sum(0) / a.sum()
        if c is not None:
            v = v - c.float()
        if u is not None and u.numel():
            v = v - (u.float() @ v) @ u.float()
        out.append(v / v.norm().clamp_min(1e-12))
    return torch.stack(out).numpy()
