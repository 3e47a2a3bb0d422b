"""Tokens/s served, per checkpoint: the "which build for which need" table's speed column.

    python -m bench.served_rate models/smollm2-135m models/wordllama [--rounds 3 --seconds 5]

One server (gunicorn.conf.py, 2 workers) serves every checkpoint under its own alias; the
bench client sends the same requests to each in turn (32 STS-B dev sentences a request,
base64, 4 in flight), in alternating rounds so that the machine's pace hits all alike. The
tokens are each model's own (`usage.prompt_tokens`), so documents/s is printed too: the
figure that compares tokenizers of different granularity.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.client import benchmark, build_bodies
from bench.common import DEFAULT_EVAL_DIR, RESULTS_DIR, sts_sentences
from zeroth.launch import GunicornServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--eval-dir", default=str(DEFAULT_EVAL_DIR))
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "served_rate.json")
    args = p.parse_args(argv)
    texts = sts_sentences(args.eval_dir)
    aliases = {f"m{i}": ckpt.resolve() for i, ckpt in enumerate(args.checkpoints)}
    tmp = Path(tempfile.mkdtemp(prefix="zeroth-rate-"))
    models_list = tmp / "models_list.yaml"
    models_list.write_text(
        "models:\n" + "".join(f"  {a}:\n    path: {c}\n" for a, c in aliases.items())
    )
    best: dict[str, dict] = {}
    with GunicornServer(
        models_list,
        workers=args.workers,
        env={"ZEROTH_REQUEST_LOG": "0"},
        log_path=tmp / "server.log",
        ready_timeout=300,
    ) as server:
        url = f"{server.url}/v1/embeddings"
        for _ in range(args.rounds):
            for alias in aliases:
                bodies = build_bodies(texts, alias, args.batch_size, "base64", None)
                summary, _ = benchmark(
                    url,
                    bodies,
                    encoding_format="base64",
                    concurrency=args.concurrency,
                    duration=args.seconds,
                )
                if summary.failures:
                    raise RuntimeError(f"{alias}: {summary.failures} failed: {summary.errors}")
                if summary.tokens_per_s > best.get(alias, {}).get("tokens_per_s", 0):
                    best[alias] = {
                        "tokens_per_s": round(summary.tokens_per_s),
                        "documents_per_s": round(summary.inputs_per_s),
                        "requests_per_s": round(summary.requests_per_s, 1),
                    }
    print("| checkpoint | tokens/s | documents/s | requests/s |")
    print("|---|---:|---:|---:|")
    for alias, ckpt in aliases.items():
        b = best[alias]
        print(
            f"| {ckpt.name} | {b['tokens_per_s']:,} | {b['documents_per_s']:,} | "
            f"{b['requests_per_s']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({str(aliases[a]): best[a] for a in aliases}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
