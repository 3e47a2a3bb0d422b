"""A small MTEB of our own: score checkpoints, or any OpenAI-compatible server, on ../shared/eval.

    python -m zeroth.evaluation --checkpoint models/smollm2-135m [models/other ...]
    python -m zeroth.evaluation --api-url http://127.0.0.1:8000/v1 --model text-embedding-3-small
    python -m zeroth.evaluation --checkpoint models/a --sentence-transformers DIR  # + reference
    options: --tasks stsb sick scifact banking77 men (default; also stsb-train, sick-train)
             --eval-dir ../shared/eval  --markdown FILE  --json FILE

Prints one table (one row per model, one column per task: Spearman×100 for STS-B/SICK-R/MEN,
nDCG@10×100 for SciFact, 5-fold CV logistic-regression accuracy×100 for Banking77).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from zeroth.evaluation.tasks import DEFAULT_TASKS, TASKS, Encode, available


def _batches(texts: Sequence[str], size: int) -> list[list[str]]:
    return [list(texts[i : i + size]) for i in range(0, len(texts), size)]


def checkpoint_encoder(
    path: str | Path,
    backend: str = "torch",
    device: str = "cpu",
    batch_size: int = 512,
    progress: bool = True,
) -> Encode:
    from zeroth.model import StaticEmbedder

    model = StaticEmbedder.from_pretrained(path, backend=backend, device=device)

    def encode(texts: Sequence[str]) -> np.ndarray:
        parts = [
            model.encode(batch)
            for batch in tqdm(
                _batches(texts, batch_size), desc="embedding", leave=False, disable=not progress
            )
        ]
        return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)

    return encode


def sentence_transformers_encoder(
    path: str | Path, batch_size: int = 64, progress: bool = True
) -> Encode:
    """A sentence-transformers folder as a reference row (e.g. the teacher of an aligned table),
    with its own tokenizer, model and pooling, as float32 unit vectors. The teacher of
    `python -m extract --teacher` encodes with it too (extract/teacher.py)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")

    def encode(texts: Sequence[str]) -> np.ndarray:
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    return encode


def decode_embedding(value: str | list[float]) -> np.ndarray:
    """base64 little-endian float32 (as requested), or floats from servers that ignore that."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float32)


def api_encoder(
    base_url: str,
    model: str,
    api_key: str = "none",
    batch_size: int = 256,
    concurrency: int = 4,
    progress: bool = True,
    timeout: float = 120.0,
) -> Encode:
    """Embeddings from any OpenAI-compatible /v1/embeddings endpoint, batched, base64."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)

    def one(batch: list[str]) -> np.ndarray:
        resp = client.embeddings.create(model=model, input=batch, encoding_format="base64")
        rows = sorted(resp.data, key=lambda d: d.index)
        if len(rows) != len(batch):
            raise RuntimeError(f"{base_url}: {len(rows)} embeddings for {len(batch)} inputs")
        return np.stack([decode_embedding(r.embedding) for r in rows])

    def encode(texts: Sequence[str]) -> np.ndarray:
        batches = _batches(texts, batch_size)
        with ThreadPoolExecutor(concurrency) as pool:
            parts = list(
                tqdm(
                    pool.map(one, batches),
                    total=len(batches),
                    desc="requests",
                    leave=False,
                    disable=not progress,
                )
            )
        return np.concatenate(parts)

    return encode


def evaluate(
    encode: Encode, tasks: Sequence[str], eval_dir: Path, progress: bool = True
) -> dict[str, dict]:
    """{task: {metric: value, ..., "seconds": s}} for the tasks whose data is present."""
    results: dict[str, dict] = {}
    for name in tqdm(tasks, desc="tasks", disable=not progress):
        task = TASKS[name]
        if not available(task, eval_dir):
            print(f"skipping {name}: data not found under {eval_dir}", file=sys.stderr)
            continue
        start = time.perf_counter()
        scores = task.run(encode, eval_dir)
        scores["seconds"] = round(time.perf_counter() - start, 2)
        results[name] = scores
    return results


def markdown_table(rows: list[tuple[str, dict[str, dict]]], tasks: Sequence[str]) -> str:
    header = "| model | " + " | ".join(TASKS[t].title for t in tasks) + " |"
    lines = [header, "|---|" + "---:|" * len(tasks)]
    for label, results in rows:
        cells = [f"{results[t][TASKS[t].main]:.1f}" if t in results else "–" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m zeroth.evaluation", description=__doc__.split("\n")[0]
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", nargs="+", metavar="DIR", help="zeroth checkpoint dir(s)")
    src.add_argument("--api-url", metavar="URL", help="OpenAI-compatible base URL (…/v1)")
    p.add_argument(
        "--sentence-transformers",
        nargs="+",
        default=[],
        metavar="DIR",
        help="sentence-transformers model folder(s) scored as extra rows after the others "
        "(a reference, e.g. the teacher of an aligned checkpoint; label: the folder name)",
    )
    p.add_argument("--model", nargs="+", metavar="NAME", help="model name(s) for --api-url")
    p.add_argument("--api-key", default="none", help="bearer token for --api-url")
    p.add_argument("--label", nargs="+", help="row labels (default: checkpoint dir / model name)")
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=sorted(TASKS),
        default=list(DEFAULT_TASKS),
        metavar="TASK",
        help=f"tasks to run (default: {' '.join(DEFAULT_TASKS)}; also: "
        + " ".join(sorted(set(TASKS) - set(DEFAULT_TASKS)))
        + ")",
    )
    p.add_argument("--eval-dir", type=Path, default=Path("../shared/eval"))
    p.add_argument("--backend", choices=["torch", "openvino"], default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="texts per call/request")
    p.add_argument("--concurrency", type=int, default=4, help="parallel API requests")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write the table as Markdown")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all metrics as JSON")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not (args.checkpoint or args.api_url or args.sentence_transformers):
        p.error("one of --checkpoint, --api-url or --sentence-transformers is required")
    if args.api_url and not args.model:
        p.error("--api-url needs --model NAME")
    names = args.checkpoint or args.model or []
    if args.label and len(args.label) != len(names):
        p.error(f"--label needs {len(names)} values, one per model")
    if not args.eval_dir.is_dir():
        p.error(f"--eval-dir {args.eval_dir}: not a directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.no_progress
    names = args.checkpoint or args.model or []
    labels = args.label or [Path(n).name if args.checkpoint else n for n in names]
    rows: list[tuple[str, dict[str, dict]]] = []
    for name, label in zip(names, labels, strict=True):
        make: Callable[[], Encode]
        if args.checkpoint:
            make = lambda n=name: checkpoint_encoder(  # noqa: E731
                n, args.backend, args.device, args.batch_size or 512, progress
            )
        else:
            make = lambda n=name: api_encoder(  # noqa: E731
                args.api_url, n, args.api_key, args.batch_size or 256, args.concurrency, progress
            )
        rows.append((label, evaluate(make(), args.tasks, args.eval_dir, progress)))
    for folder in args.sentence_transformers:
        encode = sentence_transformers_encoder(folder, args.batch_size or 64, progress)
        rows.append((Path(folder).name, evaluate(encode, args.tasks, args.eval_dir, progress)))
    table = markdown_table(rows, args.tasks)
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        payload = {
            "eval_dir": str(args.eval_dir),
            "rows": [{"model": lb, "tasks": r} for lb, r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
