"""The Ray Data callable: (id, text) batches in, (id, vector) batches out, by the server's code."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.shards import vector_column
from zeroth.models_list import DEFAULT_MAX_TOKENS
from zeroth.tokenizer import truncate


@dataclass(frozen=True)
class EmbedOptions:
    """How vectors are made; recorded with the output so a rerun cannot mix two settings."""

    checkpoint: str
    backend: str = "torch"
    device: str = "cpu"
    pooling: str = "mean"
    normalize: bool = True
    # Longer documents are cut to this many tokens (the server's on_overflow: truncate).
    max_tokens: int = DEFAULT_MAX_TOKENS

    def as_dict(self) -> dict:
        return asdict(self)


class EmbedBatch:
    """One StaticEmbedder per actor, loaded once; (id, text) batches in, (id, vector) out.

    Each output row is built from the input row it came from, in one table: ids and vectors
    are never matched up afterwards, so no reordering by Ray can pair an id with another
    document's vector. Rows whose id is in `skip` (already written) are dropped first.
    """

    def __init__(
        self, options: EmbedOptions, tokenizer: str = "auto", skip: pa.Array | None = None
    ):
        # One actor per CPU slot: actors are the parallelism, as workers are in the server.
        # More threads (torch's, or the tokenizer's pool) only fight the other actors.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        import torch

        from zeroth.model import StaticEmbedder

        torch.set_num_threads(1)
        self.options = options
        self.model = StaticEmbedder.from_pretrained(
            options.checkpoint,
            backend=options.backend,
            device=options.device,
            pooling=options.pooling,
        )
        # "auto" is the server's own route (its tiktoken twin where there is one), asked for
        # arrays of ids; "hf" the tokenizers library alone.
        if tokenizer not in ("auto", "hf"):
            raise ValueError(f"unknown tokenizer mode {tokenizer!r} (auto or hf)")
        if tokenizer == "hf":
            self.tokenize, route = (
                self.model.text.tokenize_plain,
                "tokenizers, as asked (--tokenizer hf)",
            )
        else:
            self.tokenize, route = self.model.text.tokenize_arrays, self.model.text.route
        # Workers' stderr reaches the driver (Ray prefixes the actor's name and pid).
        print(f"index: tokenizing with {route}", file=sys.stderr)
        self.skip = skip if skip is not None and len(skip) else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.skip is not None:
            batch = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=self.skip)))
        keep, vectors, _ = self.embed(batch.column("text").to_pylist())
        ids = batch.column("id")
        if keep is not None:
            ids = ids.filter(pa.array(keep))
        return pa.table({"id": ids, "vector": vector_column(vectors)})

    def embed(self, texts: list[str]) -> tuple[np.ndarray | None, np.ndarray, int]:
        """Vectors as the server makes them: (which texts got one, None for all; the vectors;
        the tokens embedded). Longer texts are cut to max_tokens; texts without tokens get none."""
        limit = self.options.max_tokens
        rows, lengths = truncate(self.tokenize(texts), limit)
        keep = None
        if lengths.size and not lengths.min():
            # The server answers 400 for an input with no tokens; there is no vector to store.
            keep = lengths > 0
            rows = [row for row, k in zip(rows, keep, strict=True) if k]
        if not rows:
            vectors = np.zeros((0, self.model.dim), dtype=np.float32)
        else:
            # Rows may be int arrays (the tiktoken twin): flatten concatenates them without
            # building one Python int per token.
            vectors = self.model.embed_ids(rows, normalize=self.options.normalize)
        return keep, vectors, int(np.minimum(lengths, limit).sum())
