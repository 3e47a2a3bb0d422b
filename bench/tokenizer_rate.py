"""The tokenizer alone: tokens/s of `encode_batch_fast` in N processes on the same texts.

This is the ceiling for a server whose per-request work is dominated by tokenising:

    python -m bench.tokenizer_rate --batch_size 256 --processes 2 --duration 10

`--impl server` times the server's own route to the same ids instead (zeroth/tokenizer.py: the
model's exact tiktoken twin where it has one, else `encode_batch_fast`);
`--impl embed` the bulk indexer's per-batch embedding (index/embed.py `EmbedBatch.embed`: that
route plus pooling, cut to the token limit) without Ray, Arrow, HTTP or I/O.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import DEFAULT_EVAL_DIR, SMOLLM2_DIR, batches, load_dataset


def _worker(
    model_dir: str,
    tokenizer_path: str,
    texts: list[list[str]],
    add_special: bool,
    duration: float,
    ready,
    start,
    out,
    cpus: set[int] | None = None,
    impl: str = "tokenizers",
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    from zeroth.tokenizer import TextTokenizer, load_tokenizer  # no torch: quick to start

    count: Callable[[list[str]], int]  # one batch's work; its tokens
    if impl == "server":
        tokenize = TextTokenizer.from_file(tokenizer_path, add_special).tokenize

        def count(batch: list[str]) -> int:
            return sum(map(len, tokenize(batch)))
    elif impl == "embed":
        from index.embed import EmbedBatch, EmbedOptions  # torch, one thread (as an actor)

        embed = EmbedBatch(EmbedOptions(checkpoint=model_dir))

        def count(batch: list[str]) -> int:
            return embed.embed(batch)[2]
    else:
        tok = load_tokenizer(Path(tokenizer_path))

        def count(batch: list[str]) -> int:
            encodings = tok.encode_batch_fast(batch, add_special_tokens=add_special)
            return sum(len(e.ids) for e in encodings)

    ready.put(os.getpid())
    start.wait()
    tokens = calls = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    deadline = t0 + duration
    while time.perf_counter() < deadline:
        batch = texts[calls % len(texts)]
        tokens += count(batch)
        calls += 1
    out.put((tokens, calls, time.perf_counter() - t0, time.process_time() - cpu0))


def tokenizer_rate(
    model_dir: Path,
    texts: Sequence[str],
    batch_size: int = 256,
    processes: int = 2,
    duration: float = 5.0,
    cpus: set[int] | None = None,
    impl: str = "tokenizers",
) -> dict:
    """Aggregate tokens/s over `processes` processes, each tokenising batches for `duration`.
    impl: "tokenizers" (encode_batch_fast), "server" (the server's tokenize route) or "embed"
    (that route plus pooling)."""
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    tok_path = str(Path(model_dir) / manifest["tokenizer"]["file"])
    add_special = bool(manifest["tokenizer"].get("add_special_tokens", True))
    groups = batches(list(texts), batch_size)
    # One rayon thread per process: N processes are meant to use N cores, like N workers.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                str(model_dir),
                tok_path,
                groups,
                add_special,
                duration,
                ready,
                start,
                out,
                cpus,
                impl,
            ),
        )
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every process has loaded its tokenizer before the clock starts
        ready.get()
    start.set()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    tokens = sum(r[0] for r in results)
    calls = sum(r[1] for r in results)
    wall = max(r[2] for r in results)
    cpu = sum(r[3] for r in results)
    return {
        "impl": impl,
        "processes": processes,
        "batch_size": batch_size,
        "tokens_per_s": tokens / wall,
        "inputs_per_s": calls * batch_size / wall,
        "batches_per_s": calls / wall,
        "duration_s": wall,
        # Per CPU-second the processes got: what other load on the machine does not change.
        "inputs_per_cpu_s": calls * batch_size / cpu,
        "cpu_seconds": cpu,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=str(SMOLLM2_DIR))
    p.add_argument("--dataset", default="sts")
    p.add_argument("--eval-dir", default=str(DEFAULT_EVAL_DIR))
    p.add_argument("--synthetic_length", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument(
        "--impl",
        choices=["tokenizers", "server", "embed"],
        default="tokenizers",
        help="tokenizers: encode_batch_fast; server: the server's route to the same ids; "
        "embed: that route plus pooling",
    )
    args = p.parse_args(argv)
    texts = load_dataset(args.dataset, args.eval_dir, args.synthetic_length)
    result = tokenizer_rate(
        Path(args.model_dir),
        texts,
        args.batch_size,
        args.processes,
        args.duration,
        impl=args.impl,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
