"""Output shards: Parquet files of (id, vector), each one committed whole by a rename.

A writer killed mid-shard leaves only a `.tmp-*` file, which the next run deletes, so every
`part-*.parquet` in the output folder is complete and the ids in them are exactly the documents
already indexed. One indexer at a time per output folder (the CLI holds a lock).

The driver writes: it takes the actors' (id, vector) blocks as they finish and commits a shard
whenever it holds `shard_rows` rows. Write tasks (a Ray Datasink) cost more here: on a small
machine Ray starts a fresh worker process for nearly every one (~2 s of CPU each, a quarter of
the whole run's CPU on SciFact x20), and a local path on a cluster's workers would scatter the
shards over their disks instead of the folder the user named.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("index")
SHARD_GLOB = "part-*.parquet"
TMP_PREFIX = ".tmp-"


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """[n, dim] float32 -> fixed_size_list<float32>[dim], the shape vector stores expect."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def write_shard(table: pa.Table, out_dir: Path) -> Path:
    """Write under a temporary name, fsync, then rename: readers never see half a shard."""
    # Time first so that a listing reads in commit order; the uuid keeps writers apart.
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = out_dir / f"{TMP_PREFIX}{name}"
    with open(tmp, "wb") as f:
        # Vectors are float noise to a compressor, a dictionary or min/max statistics: trying
        # them cost 4x the CPU of the plain write, and the file came out the same size.
        # write_batch_size: a vector column is dim values a row, and Parquet encodes a list's
        # levels batch by batch; the default batch of 1024 values cost a third more CPU.
        pq.write_table(
            table,
            f,
            use_dictionary=False,
            compression={"id": "snappy", "vector": "none"},
            write_statistics=["id"],
            write_batch_size=64 * 1024,
        )
        f.flush()
        os.fsync(f.fileno())
    final = out_dir / name
    os.replace(tmp, final)
    return final


def committed_shards(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(SHARD_GLOB))


def remove_partial(out_dir: Path) -> int:
    """Delete what killed writers left behind; returns how many files went."""
    leftovers = list(out_dir.glob(f"{TMP_PREFIX}*"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def written_ids(out_dir: Path) -> pa.Array | None:
    """Every id already committed, or None when nothing is."""
    shards = committed_shards(out_dir)
    if not shards:
        return None
    ids = [pq.read_table(path, columns=["id"]).column("id") for path in shards]
    return pa.chunked_array([c for col in ids for c in col.chunks]).combine_chunks()


def read_output(out_dir: Path) -> pa.Table:
    """All committed shards as one table (for tests, benchmarks and the LanceDB export)."""
    return pa.concat_tables(pq.read_table(path) for path in committed_shards(out_dir))


class ShardWriter:
    """Collects (id, vector) tables and commits a shard each time `shard_rows` are held."""

    def __init__(self, out_dir: Path, shard_rows: int):
        self.out_dir = Path(out_dir)
        self.shard_rows = max(1, shard_rows)
        self.pending: list[pa.Table] = []
        self.held = 0
        self.rows = 0
        self.shards = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.held += table.num_rows
        if self.held >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.held:
            return
        path = write_shard(pa.concat_tables(self.pending), self.out_dir)
        self.rows += self.held
        self.shards += 1
        log.info("committed %s: %d documents (%d this run)", path.name, self.held, self.rows)
        self.pending, self.held = [], 0
