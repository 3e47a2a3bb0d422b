"""Memory of our server with 1 and with N gunicorn workers (preloaded, pages shared).

Total memory is the sum of PSS (proportional set size: shared pages split between the
processes sharing them) over the master and its workers, after a warm-up of requests:

    python -m bench.memory --workers 1 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil

from bench.client import benchmark, build_bodies
from bench.common import (
    DEFAULT_EVAL_DIR,
    RESULTS_DIR,
    SMOLLM2_DIR,
    sts_sentences,
    write_models_list,
)
from zeroth.launch import GunicornServer


def tree_memory(pid: int) -> dict:
    """PSS/RSS/USS in MiB of a process and its descendants."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    out = {"processes": len(procs), "pss_mib": 0.0, "rss_mib": 0.0, "uss_mib": 0.0, "each": []}
    for p in procs:
        try:
            m = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out["pss_mib"] += m.pss / 2**20
        out["rss_mib"] += m.rss / 2**20
        out["uss_mib"] += m.uss / 2**20
        out["each"].append(
            {
                "pid": p.pid,
                "pss_mib": m.pss / 2**20,
                "rss_mib": m.rss / 2**20,
                "uss_mib": m.uss / 2**20,
            }
        )
    return out


def measure(workers: int, port: int, model_dir: Path, alias: str, texts, warmup_s: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="zeroth-mem-"))
    models_list = write_models_list(tmp / "models_list.yaml", alias, model_dir)
    server = GunicornServer(
        models_list, workers=workers, port=port, log_path=tmp / "server.log", ready_timeout=180
    ).start()
    try:
        url = f"{server.url}/v1/embeddings"
        # Enough concurrency that every worker serves requests (touching whatever it touches).
        for fmt, batch in (("float", 32), ("base64", 256), ("float", 1)):
            bodies = build_bodies(texts, alias, batch, fmt, None)
            summary, _ = benchmark(
                url, bodies, encoding_format=fmt, concurrency=2 * workers, duration=warmup_s
            )
            if summary.failures:
                raise RuntimeError(f"{summary.failures} failed warm-up requests: {summary.errors}")
        time.sleep(0.5)
        mem = tree_memory(server.pid)
    finally:
        server.stop()
    mem["workers"] = workers
    return mem


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=str(SMOLLM2_DIR))
    p.add_argument("--model", default="text-embedding-3-small")
    p.add_argument("--eval-dir", default=str(DEFAULT_EVAL_DIR))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--port", type=int, default=18130)
    p.add_argument("--warmup-seconds", type=float, default=2.0)
    p.add_argument("--out", default=str(RESULTS_DIR / "memory.json"))
    args = p.parse_args(argv)
    texts = sts_sentences(args.eval_dir)
    model_dir = Path(args.model_dir).resolve()
    results = [
        measure(w, args.port + i, model_dir, args.model, texts, args.warmup_seconds)
        for i, w in enumerate(args.workers)
    ]
    for r in results:
        print(
            f"{r['workers']} worker(s): PSS {r['pss_mib']:.0f} MiB total over {r['processes']} "
            f"processes (RSS sum {r['rss_mib']:.0f} MiB, USS sum {r['uss_mib']:.0f} MiB)"
        )
    base = results[0]["pss_mib"]
    report = {"results": results}
    for r in results[1:]:
        ratio = r["pss_mib"] / base
        report[f"ratio_{r['workers']}_vs_{results[0]['workers']}"] = ratio
        print(
            f"{r['workers']} workers / {results[0]['workers']} worker: {ratio:.2f}× (target < 1.5×)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
