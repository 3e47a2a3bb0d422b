"""python -m index: embed documents into Parquet shards of (id, vector) with Ray Data."""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.compute as pc

import index
import zeroth
from index.embed import EmbedBatch, EmbedOptions
from index.shards import ShardWriter, committed_shards, remove_partial, written_ids
from index.sources import FORMATS, InputError, detect_format, read_documents
from zeroth.manifest import MANIFEST_NAME, WEIGHTS_NAME, Manifest
from zeroth.models_list import DEFAULT_MAX_TOKENS

INFO_NAME = "index.json"
LOCK_NAME = ".lock"
log = logging.getLogger("index")


class SettingsChanged(ValueError):
    pass


class Busy(RuntimeError):
    pass


# Documents per embed call. Embedding costs the same per document from 512 up, and Ray's
# per-batch cost is small next to 2048 documents' (~0.3 s on a core); bigger batches only
# lengthen the end of a run, where one actor finishes its last batch while the others idle
# (up to a whole batch's time: 1.2 s at 8192 on SciFact).
DEFAULT_BATCH_SIZE = 2048
# Ray Data merges what a read task yields into blocks of up to this much before any leaves the
# task (Ray's default, 128 MiB, is most of a SciFact x 20 file): smaller, the first documents
# reach the actors while the rest of the file is still being read.
TARGET_BLOCK_BYTES = 16 << 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m index",
        description="Embed documents with Ray Data into Parquet shards of (id, vector). "
        "A rerun with the same --out skips every document already written.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (Parquet shards)")
    p.add_argument("--checkpoint", required=True, type=Path, help="a zeroth checkpoint folder")
    p.add_argument("--format", choices=FORMATS, help="default: from the file names")
    p.add_argument("--id-field", default="id", help="JSONL/Parquet id field (default: id)")
    p.add_argument(
        "--text-field",
        default="text",
        help="JSONL/Parquet text field; several, comma-separated, are joined by a space "
        "(e.g. title,text). Default: text",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"documents per embed call (default {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--shard-rows",
        type=int,
        default=10_000,
        help="documents per output shard, at least (default 10000); a shard is the unit a "
        "rerun resumes from",
    )
    p.add_argument("--address", help="an existing Ray cluster (ray://host:10001 or auto)")
    p.add_argument(
        "--num-cpus", type=int, help="CPUs for a local Ray: one embedding actor each (default: all)"
    )
    p.add_argument(
        "--num-actors",
        type=int,
        help="embedding actors (default: one per GPU with --device cuda; else one per "
        "--num-cpus on a local Ray, one per CPU but one on a cluster)",
    )
    p.add_argument(
        "--tokenizer",
        choices=("auto", "hf"),
        default="auto",
        help="auto: the server's own route (the model's exact tiktoken twin where it has one, "
        "checked at start); hf: the tokenizers library alone",
    )
    p.add_argument("--backend", choices=("torch", "openvino"), default="torch")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--pooling", choices=("mean", "max"), default="mean")
    p.add_argument(
        "--no-normalize", dest="normalize", action="store_false", help="skip L2 normalisation"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"cut longer documents to this many tokens (default {DEFAULT_MAX_TOKENS})",
    )
    return p


def check_settings(out: Path, settings: dict) -> None:
    """The first run records how vectors were made; later runs must make them the same way."""
    info = out / INFO_NAME
    if info.is_file():
        before = json.loads(info.read_text())
        if before != settings:
            keys = settings.keys() | before.keys()
            changed = sorted(k for k in keys if before.get(k) != settings.get(k))
            raise SettingsChanged(
                f"{out} was indexed with other settings ({', '.join(changed)}); "
                "use a new --out or delete it"
            )
        return
    tmp = info.with_name(f".tmp-{INFO_NAME}")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, info)


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One indexer per output folder: a second one would write the same documents again."""
    with open(out / LOCK_NAME, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{out}: another indexer is writing here") from None
        yield


def read_manifest(checkpoint: Path) -> Manifest:
    """The checkpoint's manifest, after a look at its files (the actors load the tensors)."""
    try:
        manifest = Manifest.read(checkpoint)
    except FileNotFoundError:
        raise InputError(f"{checkpoint}: no {MANIFEST_NAME} (not a zeroth checkpoint)") from None
    except Exception as exc:  # pydantic or JSON errors, reported in one line
        raise InputError(f"{checkpoint}/{MANIFEST_NAME}: {exc}".splitlines()[0]) from None
    for name in (WEIGHTS_NAME, manifest.tokenizer.file):
        if not (checkpoint / name).is_file():
            raise InputError(f"{checkpoint}: missing {name}")
    return manifest


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect or start a local Ray; False when the caller already had one running."""
    import ray

    if ray.is_initialized():
        return False
    # Actors are the parallelism; thread pools inside them would only fight each other.
    # Local workers inherit this environment; a cluster's get it through the runtime env.
    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if address:
        # Workers elsewhere need this code; the cluster must already have the requirements.
        modules = [str(Path(index.__file__).parent), str(Path(zeroth.__file__).parent)]
        ray.init(address=address, runtime_env={"py_modules": modules, "env_vars": env})
    else:
        for key, value in env.items():
            os.environ.setdefault(key, value)
        # One logical CPU more than there are actors: Ray Data's own small tasks (listing
        # Parquet files) ask for a whole CPU and would wait forever behind actors holding all.
        ray.init(num_cpus=(num_cpus or os.cpu_count() or 1) + 1, include_dashboard=False)
    return True


def run(args: argparse.Namespace) -> dict:
    text_fields = [f.strip() for f in args.text_field.split(",") if f.strip()]
    fmt = args.format or detect_format(args.inputs)
    options = EmbedOptions(
        checkpoint=str(args.checkpoint.resolve()),
        backend=args.backend,
        device=args.device,
        pooling=args.pooling,
        normalize=args.normalize,
        max_tokens=args.max_tokens,
    )
    manifest = read_manifest(args.checkpoint)
    # Reading the inputs is checked before anything is written or started.
    source = {"format": fmt, "id_field": args.id_field, "text_fields": text_fields}
    read_documents(args.inputs, fmt, args.id_field, text_fields, check_only=True)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out):
        settings = {
            **options.as_dict(),
            "source": source,
            "manifest": manifest.model_dump(mode="json"),
        }
        check_settings(out, settings)
        return _index(args, options, fmt, text_fields, out)


def _index(
    args: argparse.Namespace, options: EmbedOptions, fmt: str, text_fields: list[str], out: Path
) -> dict:
    import ray
    import ray.data

    if removed := remove_partial(out):
        log.info("removed %d unfinished shard(s) of an interrupted run", removed)
    written = written_ids(out)
    before = 0 if written is None else len(written)
    if before:
        log.info("resuming: %d documents already written in %s", before, out)

    t0 = time.perf_counter()
    started = start_ray(args.address, args.num_cpus)
    try:
        ray_seconds = time.perf_counter() - t0
        gpu = args.device == "cuda"
        if gpu:
            slots = int(ray.cluster_resources().get("GPU", 1))
        else:  # one CPU left for Ray Data's other tasks (see start_ray)
            slots = int(ray.cluster_resources().get("CPU", 2)) - 1
        actors = args.num_actors or max(1, slots)
        ray.data.DataContext.get_current().target_max_block_size = TARGET_BLOCK_BYTES
        ds = read_documents(args.inputs, fmt, args.id_field, text_fields)
        ds = ds.map_batches(
            EmbedBatch,
            fn_constructor_args=(options, args.tokenizer, written),
            batch_size=args.batch_size,
            batch_format="pyarrow",
            zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=0 if gpu else 1,
            num_gpus=1 if gpu else 0,
        )
        writer = ShardWriter(out, args.shard_rows)
        # Blocks come as the actors finish them (in no particular order: each row carries its
        # own id); a shard is committed whenever enough rows are held, the rest at the end.
        first_at = first_rows = None
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if first_at is None:
                first_at, first_rows = time.perf_counter(), block.num_rows
            writer.add(block)
        writer.flush()
        done = time.perf_counter()
        seconds = done - t0
    finally:
        if started:
            ray.shutdown()

    ids = written_ids(out)
    total = 0 if ids is None else len(ids)
    distinct = 0 if ids is None else pc.count_distinct(ids).as_py()
    if distinct != total:
        log.warning("%d rows repeat an id: the inputs hold duplicate ids", total - distinct)
    return {
        "out": str(out),
        "shards": len(committed_shards(out)),
        "documents": total,
        "new": total - before,
        "skipped": before,
        "duplicate_ids": total - distinct,
        "ray_start_seconds": round(ray_seconds, 3),
        "seconds": round(seconds, 3),
        "docs_per_s": round((total - before) / seconds, 1) if seconds > 0 else None,
        # From the first embedded block to the last one written: the pipeline's rate once
        # Ray, the actors and the model are up (None with fewer than two blocks).
        "streaming_seconds": round(done - first_at, 3) if first_at else None,
        "streaming_docs_per_s": (
            round((writer.rows - first_rows) / (done - first_at), 1)
            if first_at and writer.rows > first_rows and done > first_at
            else None
        ),
        "actors": actors,
    }


EXPECTED = (InputError, SettingsChanged, Busy)
# An InputError raised in a Ray worker reaches the driver as text inside Ray's own exception.
_REMOTE_INPUT_ERROR = re.compile(r"^index\.sources\.InputError: (.+)$", re.MULTILINE)


def expected_message(exc: BaseException) -> str | None:
    """The one line of our own error, here or inside what Ray wrapped around it; else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        # Text first: what a read task raises reaches here as an InputError too (Ray's error
        # subclasses the original), whose first line is Ray's header, not our message.
        if match := _REMOTE_INPUT_ERROR.search(str(exc)):
            return match.group(1)
        if isinstance(exc, EXPECTED):
            return str(exc).splitlines()[0]
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except Exception as exc:
        message = expected_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
