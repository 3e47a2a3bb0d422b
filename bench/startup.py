"""Start-up time: from launching `gunicorn -c gunicorn.conf.py server:app` to /ready 200.

python -m bench.startup --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS_DIR, SMOLLM2_DIR, write_models_list
from zeroth.launch import GunicornServer


def time_to_ready(port: int, workers: int, models_list: Path, log: Path) -> float:
    t0 = time.perf_counter()
    server = GunicornServer(models_list, workers=workers, port=port, log_path=log)
    try:
        server.start()
        return time.perf_counter() - t0
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=str(SMOLLM2_DIR))
    p.add_argument("--model", default="text-embedding-3-small")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--port", type=int, default=18140)
    p.add_argument("--out", default=str(RESULTS_DIR / "startup.json"))
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="zeroth-startup-"))
    models_list = write_models_list(
        tmp / "models_list.yaml", args.model, Path(args.model_dir).resolve()
    )
    times = []
    for i in range(args.repeat):
        t = time_to_ready(args.port, args.workers, models_list, tmp / f"server{i}.log")
        times.append(t)
        print(f"run {i + 1}: /ready after {t:.2f} s")
    median = statistics.median(times)
    print(f"median {median:.2f} s over {len(times)} runs (target < 5 s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"times_s": times, "median_s": median, "workers": args.workers}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
