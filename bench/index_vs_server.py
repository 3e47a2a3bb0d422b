"""Bulk indexer against the server: the same documents both ways, documents/s side by side.

    python -m bench.index_vs_server              # SciFact x1 and x20, 3 runs each, 2 CPUs
    python -m bench.index_vs_server --tokenizer hf --json

What is timed:
1. `python -m index` as a user runs it (a subprocess: interpreter start, imports, a local Ray
   with --cpus CPUs, reading, embedding, writing, Ray's shutdown), on the SciFact file (5,183
   docs, id `_id`, text = title + " " + text) and on SciFact repeated --repeat times with ids
   made unique (`<id>#<copy>`), --runs times each, interleaved; the fastest run of each size
   counts. End to end = that command's wall time. Steady state = the extra documents over the
   extra seconds, (docs_N - docs_1) / (wall_N - wall_1): the fixed cost (Ray and the actors
   starting, the model loading) cancels out.
2. The real server (gunicorn.conf.py, --workers workers, started once: model loaded and /ready
   before any clock) gets the repeated corpus once through from `bench.client` after each
   pair of indexer runs (batches of --batch-size documents, serialised beforehand, base64 as
   the openai client asks, --concurrency in flight); the fastest pass counts. The client runs
   on the same cores; the server idles while the indexer runs.
3. The ceiling: the embedding code alone (`bench.tokenizer_rate --impl embed`: the indexer's
   `EmbedBatch.embed`, i.e. the server's tokenize route plus pooling, no Ray, Arrow, HTTP or
   I/O) in --cpus processes on the x1 texts, in the indexer's batch size, for 10 s after each
   server pass; the fastest counts. An indexer runs this code plus reading, Ray and writing, so
   its steady state stays below the ceiling: steady state / ceiling is the indexer's own
   yardstick (also given per CPU-second of all the processes of a run, which other load on a
   shared machine moves less than walls), and the ceiling's ratio to the server bounds the
   ratio an indexer can reach on these cores. ("In run" counts from the first finished block,
   while the other actors' first blocks are nearly done: up to a block per actor too high.)
4. For a random sample of ids, the server's vector for that id's text (float JSON) is compared
   with the indexer's vector for that id (cosine); every id must be written exactly once.

Nothing overlaps, nothing is pinned: the machine's cores are the budget of each in turn.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

from bench.client import Summary, benchmark, build_bodies
from bench.common import DEFAULT_EVAL_DIR, REPO, SMOLLM2_DIR, write_models_list
from bench.tokenizer_rate import tokenizer_rate
from index.cli import DEFAULT_BATCH_SIZE
from index.shards import read_output
from index.sources import join_fields
from zeroth.launch import GunicornServer

ALIAS = "text-embedding-3-small"
TEXT_FIELDS = ("title", "text")


def load_records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_repeated(path: Path, records: list[dict], repeat: int) -> dict[str, str]:
    """`repeat` copies of the corpus, ids `<id>#<copy>`; returns id -> the text to embed."""
    texts: dict[str, str] = {}
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for k in range(repeat):
            for rec in records:
                doc_id = f"{rec['_id']}#{k}"
                f.write(json.dumps({**rec, "_id": doc_id}) + "\n")
                texts[doc_id] = join_fields([rec.get(field) for field in TEXT_FIELDS])
    if len(texts) != repeat * len(records):
        raise SystemExit("the corpus repeats an id")
    return texts


PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Become the parent of this process' orphaned descendants (Linux): Ray's workers outlive
    the raylet that started them by a moment, and their CPU time must count too."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans(keep: set[int], timeout: float = 60.0) -> None:
    """Wait until every child but `keep` has exited and been reaped (RUSAGE_CHILDREN then
    holds their CPU time)."""
    deadline = time.monotonic() + timeout
    while kids := [c.pid for c in psutil.Process().children() if c.pid not in keep]:
        for pid in kids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if time.monotonic() > deadline:
            raise SystemExit(f"processes {kids} outlived the indexer by {timeout} s")
        time.sleep(0.05)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_indexer(corpus: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "index",
        str(corpus),
        "--out",
        str(out),
        "--checkpoint",
        str(args.checkpoint),
        "--id-field",
        "_id",
        "--text-field",
        ",".join(TEXT_FIELDS),
        "--num-cpus",
        str(args.cpus),
        "--tokenizer",
        args.tokenizer,
    ]
    keep = {c.pid for c in psutil.Process().children()}  # the server
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    reap_orphans(keep)
    cpu = children_cpu() - cpu0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"indexer failed with {proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = wall
    # Every process of the run (driver, Ray, actors, readers): unlike its wall time, this does
    # not grow when other programs take the machine's cores.
    summary["cpu_seconds"] = cpu
    summary["tokenizer_lines"] = sorted(
        {line.split("index: ", 1)[1] for line in proc.stderr.splitlines() if "index: tok" in line}
    )
    return summary


def vectors_by_id(out: Path) -> tuple[dict[str, int], np.ndarray]:
    table = read_output(out)
    ids = table.column("id").to_pylist()
    column = table.column("vector").combine_chunks()
    vectors = column.values.to_numpy().reshape(len(ids), column.type.list_size)
    return {doc_id: row for row, doc_id in enumerate(ids)}, vectors


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


class Server:
    """Our server as deployed (gunicorn.conf.py), started once, idle between its timed passes."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        models_list = write_models_list(tmp / "models_list.yaml", ALIAS, args.checkpoint.resolve())
        self.args = args
        self.server = GunicornServer(
            models_list,
            workers=args.workers,
            port=args.port,
            env={"ZEROTH_LOG_LEVEL": "warning"},
            log_path=tmp / "server.log",
            ready_timeout=180,
        ).start()
        self.base = self.server.url

    def close(self) -> None:
        self.server.stop()

    def load(self, bodies: list) -> Summary:
        """One pass of the corpus from bench.client; the clock runs from first to last reply."""
        summary, _ = benchmark(
            self.base + "/v1/embeddings",
            bodies,
            encoding_format=self.args.encoding_format,
            concurrency=self.args.concurrency,
            duration=None,
            num_requests=len(bodies),
        )
        if summary.failures:
            raise SystemExit(f"server answered {summary.errors}")
        return summary

    def vectors(self, texts: list[str]) -> np.ndarray:
        """As float JSON, the format a cosine check trusts most."""
        rows = []
        for start in range(0, len(texts), 128):
            payload = {"model": ALIAS, "input": texts[start : start + 128]}
            rows += [d["embedding"] for d in post(self.base + "/v1/embeddings", payload)["data"]]
        return np.asarray(rows, dtype=np.float32)


def check_output(name: str, by_id: dict[str, int], rows: int, expected: dict[str, str]) -> None:
    if rows != len(by_id) or by_id.keys() != expected.keys():
        raise SystemExit(
            f"{name}: {rows} rows, {len(by_id)} distinct ids, {len(expected)} documents expected"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_EVAL_DIR / "scifact/corpus.jsonl.gz")
    p.add_argument("--checkpoint", type=Path, default=SMOLLM2_DIR)
    p.add_argument("--repeat", type=int, default=20, help="copies in the bigger run (>= 2)")
    p.add_argument("--runs", type=int, default=3, help="indexer runs of each size (fastest counts)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the indexer's local Ray")
    p.add_argument("--tokenizer", choices=("auto", "hf"), default="auto", help="indexer's")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--batch-size", type=int, default=32, help="documents per server request")
    p.add_argument("--concurrency", type=int, default=4, help="server requests in flight")
    p.add_argument("--encoding-format", choices=("base64", "float"), default="base64")
    p.add_argument("--sample", type=int, default=512, help="documents compared by cosine")
    p.add_argument("--port", type=int, default=18310)
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", type=Path, help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.repeat < 2:
        p.error("--repeat must be at least 2 (the steady state is the difference of two runs)")

    adopt_orphans()
    records = load_records(args.corpus)
    n1 = len(records)
    # x1 is the corpus file itself, with its own ids.
    texts1 = {rec["_id"]: join_fields([rec.get(f) for f in TEXT_FIELDS]) for rec in records}
    one_walls: list[float] = []
    many_walls: list[float] = []
    one_cpus: list[float] = []
    many_cpus: list[float] = []
    streaming: list[float] = []
    served: list[Summary] = []
    ceilings: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="zeroth-index-bench-") as tmpdir:
        tmp = Path(tmpdir)
        corpus_n = tmp / f"x{args.repeat}.jsonl.gz"
        textsn = write_repeated(corpus_n, records, args.repeat)
        texts = list(textsn.values())
        requests = math.ceil(len(texts) / args.batch_size)
        # Serialised before any clock starts, as bench.client always does.
        bodies = build_bodies(texts, ALIAS, args.batch_size, args.encoding_format, requests)
        server = Server(args, tmp)
        try:
            # Taking turns (the server idles while the indexer runs), each into a fresh folder;
            # the fastest of each counts: the machine is shared, and noise only adds time.
            for run in range(args.runs):
                one = run_indexer(args.corpus, tmp / f"out1-{run}", args)
                by_id1, _ = vectors_by_id(tmp / f"out1-{run}")
                check_output("x1", by_id1, one["documents"], texts1)
                one_walls.append(one["wall_seconds"])
                one_cpus.append(one["cpu_seconds"])
                many = run_indexer(corpus_n, tmp / f"outn-{run}", args)
                by_id, vectors = vectors_by_id(tmp / f"outn-{run}")
                check_output(f"x{args.repeat}", by_id, many["documents"], textsn)
                many_walls.append(many["wall_seconds"])
                many_cpus.append(many["cpu_seconds"])
                streaming.append(many["streaming_docs_per_s"] or 0.0)
                served.append(server.load(bodies))
                # The ceiling in every run too, the fastest counting like the rest: one
                # measurement at the end would catch whatever else the machine did then.
                ceilings.append(
                    tokenizer_rate(
                        args.checkpoint,
                        list(texts1.values()),
                        DEFAULT_BATCH_SIZE,
                        args.cpus,
                        duration=10.0,
                        impl="embed",
                    )
                )
                print(
                    f"run {run + 1}/{args.runs}: indexer x1 {one_walls[-1]:.2f} s, "
                    f"x{args.repeat} {many_walls[-1]:.2f} s; server {served[-1].duration_s:.2f} s; "
                    f"ceiling {ceilings[-1]['inputs_per_s']:.0f} docs/s",
                    file=sys.stderr,
                )
            ceiling = max(c["inputs_per_s"] for c in ceilings)
            rng = random.Random(0)
            sample_ids = rng.sample(sorted(textsn), min(args.sample, len(textsn)))
            server_vectors = server.vectors([textsn[i] for i in sample_ids])
        finally:
            server.close()

    nn = len(textsn)
    mine = vectors[[by_id[i] for i in sample_ids]]
    cos = np.sum(mine * server_vectors, 1) / (
        np.linalg.norm(mine, axis=1) * np.linalg.norm(server_vectors, axis=1)
    )
    wall1, walln = min(one_walls), min(many_walls)
    e2e1 = n1 / wall1
    e2en = nn / walln
    steady = (nn - n1) / (walln - wall1)
    # The same in CPU time: documents per CPU-second of everything the indexer ran, against
    # the embedding code's own; other load on the machine moves these far less than walls.
    steady_cpu = (nn - n1) / (min(many_cpus) - min(one_cpus))
    ceiling_cpu = max(c["inputs_per_cpu_s"] for c in ceilings)
    best = max(served, key=lambda summary: summary.inputs_per_s)
    server_rate = best.inputs_per_s
    result = {
        "corpus": str(args.corpus),
        "repeat": args.repeat,
        "cpus": args.cpus,
        "indexer_tokenizer": args.tokenizer,
        "indexer_tokenizer_used": many["tokenizer_lines"],
        "x1_documents": n1,
        "runs": args.runs,
        "x1_wall_seconds": round(wall1, 2),
        "x1_wall_seconds_all": [round(w, 2) for w in one_walls],
        "x1_end_to_end_docs_per_s": round(e2e1, 1),
        "xn_documents": nn,
        "xn_wall_seconds": round(walln, 2),
        "xn_wall_seconds_all": [round(w, 2) for w in many_walls],
        "xn_end_to_end_docs_per_s": round(e2en, 1),
        "steady_state_docs_per_s": round(steady, 1),
        "in_run_docs_per_s": max(streaming),
        "in_run_docs_per_s_all": streaming,
        "fixed_cost_seconds": round(wall1 - n1 / steady, 2),
        "server_docs_per_s": round(server_rate, 1),
        "server_seconds": round(best.duration_s, 2),
        "server_seconds_all": [round(summary.duration_s, 2) for summary in served],
        "server_documents": nn,
        "server_requests": requests,
        "server_workers": args.workers,
        "server_batch_size": args.batch_size,
        "server_concurrency": args.concurrency,
        "server_encoding_format": args.encoding_format,
        "client_cpu_percent_of_one_core": round(best.client_cpu_percent_of_one_core, 1),
        "ratio_steady_state": round(steady / server_rate, 2),
        "ratio_in_run": round(max(streaming) / server_rate, 2),
        "ratio_end_to_end_x1": round(e2e1 / server_rate, 2),
        "ratio_end_to_end_xn": round(e2en / server_rate, 2),
        "ceiling_docs_per_s": round(ceiling, 1),
        "ceiling_docs_per_s_all": [round(c["inputs_per_s"], 1) for c in ceilings],
        "ratio_ceiling": round(ceiling / server_rate, 2),
        # The indexer's own yardstick: its steady state over the embedding code alone.
        "ratio_steady_to_ceiling": round(steady / ceiling, 3),
        "x1_cpu_seconds_all": [round(c, 2) for c in one_cpus],
        "xn_cpu_seconds_all": [round(c, 2) for c in many_cpus],
        "steady_state_docs_per_cpu_s": round(steady_cpu, 1),
        "ceiling_docs_per_cpu_s": round(ceiling_cpu, 1),
        "ratio_steady_to_ceiling_cpu": round(steady_cpu / ceiling_cpu, 3),
        "sample": len(sample_ids),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs_diff": float(np.abs(mine - server_vectors).max()),
    }
    if args.save:
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        r, k = result, args.repeat
        print(
            f"indexer: python -m index, local Ray with {args.cpus} CPUs, "
            f"--tokenizer {r['indexer_tokenizer']}"
        )
        print(
            f"  end to end, SciFact x1   {n1:>7} docs {r['x1_wall_seconds']:>7.2f} s "
            f"{r['x1_end_to_end_docs_per_s']:>8.0f} docs/s"
        )
        print(
            f"  end to end, SciFact x{k:<3d} {nn:>7} docs {r['xn_wall_seconds']:>7.2f} s "
            f"{r['xn_end_to_end_docs_per_s']:>8.0f} docs/s"
        )
        print(
            f"  steady state (x{k} - x1)  {nn - n1:>7} docs "
            f"{walln - wall1:>7.2f} s {steady:>8.0f} docs/s "
            f"(fixed cost {r['fixed_cost_seconds']:.1f} s)"
        )
        print(
            f"  in run, x{k} (first to last embedded block)       "
            f"{r['in_run_docs_per_s']:>8.0f} docs/s"
        )
        print(
            f"server: {args.workers} gunicorn workers, bench.client batch {args.batch_size}, "
            f"{args.encoding_format}, {args.concurrency} in flight "
            f"(client {r['client_cpu_percent_of_one_core']:.0f} % of a core)"
        )
        print(
            f"  SciFact x{k:<3d}              {nn:>7} docs {r['server_seconds']:>7.2f} s "
            f"{server_rate:>8.0f} docs/s"
        )
        print(
            f"ratio indexer/server: steady state {r['ratio_steady_state']:.2f}x "
            f"(in run {r['ratio_in_run']:.2f}x), "
            f"end to end x{k} {r['ratio_end_to_end_xn']:.2f}x, "
            f"end to end x1 {r['ratio_end_to_end_x1']:.2f}x"
        )
        print(
            f"ceiling: the embedding code alone in {args.cpus} processes (no Ray, no HTTP, "
            f"no I/O) {ceiling:.0f} docs/s = {r['ratio_ceiling']:.2f}x the server; an indexer "
            "runs this code and more, so its steady state stays below it"
        )
        print(
            f"indexer steady state / ceiling: {r['ratio_steady_to_ceiling']:.3f} (wall); "
            f"per CPU-second {steady_cpu:.0f} / {ceiling_cpu:.0f} docs = "
            f"{r['ratio_steady_to_ceiling_cpu']:.3f}"
        )
        print(
            f"cosine vs server (n={len(sample_ids)}): min {r['cosine_min']:.6f} "
            f"mean {r['cosine_mean']:.6f}, max |diff| {r['max_abs_diff']:.2e}; "
            "every id written exactly once"
        )
    return 0 if result["cosine_min"] >= 0.9999 else 1


if __name__ == "__main__":
    raise SystemExit(main())
