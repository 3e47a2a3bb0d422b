"""Our server against the seed-style reference server: same machine, same run, same workers.

Starts both under gunicorn (2 workers each, own ports), checks they return the same vectors,
then for each case drives them with the same requests in alternating rounds so machine noise
hits both, and prints the ratios. The 256-sentence case is compared with the tokenizer alone on
the same texts in as many processes as there are workers (bench/tokenizer_rate.py), and also
with the server's own route to the same ids alone (`--impl server`: zeroth/tokenizer.py).

    python -m bench.side_by_side --rounds 3 --round-seconds 5
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import psutil

from bench.client import benchmark, build_bodies
from bench.common import (
    DEFAULT_EVAL_DIR,
    RESULTS_DIR,
    SMOLLM2_DIR,
    SMOLLM2_SEED_DIR,
    parse_cpus,
    seed_command,
    sts_sentences,
    write_models_list,
)
from bench.tokenizer_rate import tokenizer_rate
from zeroth.launch import gunicorn_command, server_env, start_process, stop_process, wait_ready


@dataclass
class Case:
    key: str
    title: str
    batch_size: int
    encoding_format: str
    metric: str  # requests_per_s or tokens_per_s
    target: float  # ratio to beat
    against: str  # "seed" or "tokenizer"


CASES = [
    Case("a", "32 STS sentences/request, float JSON", 32, "float", "requests_per_s", 8, "seed"),
    Case("b", "32 STS sentences/request, base64", 32, "base64", "requests_per_s", 10, "seed"),
    Case("c", "1 sentence/request, float JSON", 1, "float", "requests_per_s", 3, "seed"),
    Case(
        "d",
        "256 sentences/request, base64: tokens/s",
        256,
        "base64",
        "tokens_per_s",
        0.6,
        "tokenizer",
    ),
]


def fetch_vectors(url: str, texts: list[str], model: str) -> np.ndarray:
    import urllib.request

    body = orjson.dumps({"model": model, "input": texts, "encoding_format": "base64"})
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = orjson.loads(r.read())
    return np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in doc["data"]]
    )


def run(args: argparse.Namespace) -> dict:
    texts = sts_sentences(args.eval_dir)
    model_dir = Path(args.model_dir).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="zeroth-sbs-"))
    models_list = write_models_list(tmp / "models_list.yaml", args.model, model_dir)
    ours_env = server_env({"MODELS_LIST": str(models_list)})
    seed_env = server_env({"SEED_MODEL_DIR": str(Path(args.seed_model_dir).resolve())})
    ports = {"ours": args.port, "seed": args.port + 1, "seed_lists": args.port + 2}
    server_cpus = parse_cpus(args.server_cpus)
    client_cpus = parse_cpus(args.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    procs = {
        "ours": start_process(
            gunicorn_command(ports["ours"], args.workers), ours_env, tmp / "ours.log", server_cpus
        ),
        "seed": start_process(
            seed_command(ports["seed"], args.workers), seed_env, tmp / "seed.log", server_cpus
        ),
    }
    if "b" in (args.cases or "b"):
        # The base64 case's baseline as the issue describes the seed ("jsonify of lists"): it
        # answers float lists whatever encoding is asked (the openai client accepts that).
        # Its prototype's figures (7.6x with base64, above 5.9x with floats) only add up
        # against such a seed. "seed" itself, which does encode base64, is reported too.
        procs["seed_lists"] = start_process(
            seed_command(ports["seed_lists"], args.workers),
            seed_env | {"SEED_BASE64": "lists"},
            tmp / "seed_lists.log",
            server_cpus,
        )
    urls = {k: f"http://127.0.0.1:{ports[k]}/v1/embeddings" for k in procs}
    report: dict = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "load_before": list(psutil.getloadavg()),
        },
        "config": {k: v for k, v in vars(args).items()},
        "cases": {},
    }
    try:
        for name, proc in procs.items():
            wait_ready(f"http://127.0.0.1:{ports[name]}/ready", 180, proc)
        a = fetch_vectors(urls["ours"], texts[:64], args.model)
        b = fetch_vectors(urls["seed"], texts[:64], args.model)
        report["max_abs_diff_ours_vs_seed"] = float(np.abs(a - b).max())
        post = json.loads((model_dir / "manifest.json").read_text()).get("postprocess", {})
        report["postprocess"] = post
        # Equal vectors are expected only when both serve one plain [0, 0] checkpoint.
        report["seed_skips_postprocess"] = bool(
            Path(args.seed_model_dir).resolve() != model_dir
            or post.get("weighting", "none") != "none"
            or post.get("center")
            or post.get("remove_components")
        )
        note = (
            f" (expected: ours serves {model_dir.name} with its post-processing folded in, the "
            "seed the plain [0, 0] slice)"
            if report["seed_skips_postprocess"]
            else ""
        )
        print(f"max |ours - seed| = {report['max_abs_diff_ours_vs_seed']:.2e}{note}")

        for case in CASES:
            if args.cases and case.key not in args.cases:
                continue
            pids = {k: p.pid for k, p in procs.items()}
            report["cases"][case.key] = run_case(case, texts, urls, model_dir, args, pids)
    finally:
        for proc in procs.values():
            stop_process(proc)
    report["machine"]["load_after"] = list(psutil.getloadavg())
    return report


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_case(case: Case, texts, urls, model_dir: Path, args, pids: dict[str, int]) -> dict:
    bodies = build_bodies(texts, args.model, case.batch_size, case.encoding_format, None)
    kw = dict(encoding_format=case.encoding_format, concurrency=args.concurrency, validate="light")
    sides = ["seed", "ours"] + (["seed_lists"] if case.key == "b" and "seed_lists" in urls else [])
    for side in sides:  # warm-up: first requests, caches, lazy imports
        benchmark(urls[side], bodies, duration=args.warmup_seconds, **kw)
    rounds: dict[str, list[dict]] = {s: [] for s in sides}
    tok_rounds: list[dict] = []
    server_tok_rounds: list[dict] = []
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            cpu0 = tree_cpu(pids[side])
            summary, _ = benchmark(urls[side], bodies, duration=args.round_seconds, **kw)
            server_cpu = tree_cpu(pids[side]) - cpu0
            rounds[side].append(asdict(summary) | {"server_cpu_s": server_cpu})
            print(
                f"  [{case.key}] round {r + 1} {side:5s} {summary.requests_per_s:8.1f} req/s "
                f"{summary.tokens_per_s:9.0f} tok/s  p50 {summary.latency_ms.p50:7.2f} ms  "
                f"server CPU {1000 * server_cpu / max(1, summary.successes):6.2f} ms/req  "
                f"client CPU {summary.client_cpu_percent_of_one_core:3.0f} %  "
                f"failures {summary.failures}"
            )
        if case.against == "tokenizer":
            tr, st = (
                tokenizer_rate(
                    model_dir,
                    texts,
                    case.batch_size,
                    args.workers,
                    args.round_seconds,
                    parse_cpus(args.server_cpus),
                    impl=impl,
                )
                for impl in ("tokenizers", "server")
            )
            tok_rounds.append(tr)
            server_tok_rounds.append(st)
            print(
                f"  [{case.key}] round {r + 1} tokenizer alone ({args.workers} processes) "
                f"{tr['tokens_per_s']:9.0f} tok/s; the server's tokenize route alone "
                f"{st['tokens_per_s']:9.0f} tok/s"
            )

    def total(side: str, metric: str) -> float:
        wall = sum(x["duration_s"] for x in rounds[side])
        if metric == "requests_per_s":
            return sum(x["successes"] for x in rounds[side]) / wall
        return sum(x["tokens_per_s"] * x["duration_s"] for x in rounds[side]) / wall

    out = {
        "title": case.title,
        "metric": case.metric,
        "target": case.target,
        "against": case.against,
        "rounds": rounds,
        "failures": {s: sum(x["failures"] for x in rounds[s]) for s in sides},
        "ours": total("ours", case.metric),
        "seed": total("seed", case.metric),
        "ours_p50_ms": statistics.median(x["latency_ms"]["p50"] for x in rounds["ours"]),
        "seed_p50_ms": statistics.median(x["latency_ms"]["p50"] for x in rounds["seed"]),
        # CPU the server spent per successful request: robust to other load on the machine.
        "server_cpu_ms_per_request": {
            s: 1000
            * sum(x["server_cpu_s"] for x in rounds[s])
            / max(1, sum(x["successes"] for x in rounds[s]))
            for s in sides
        },
        "client_cpu_percent": {
            s: statistics.mean(x["client_cpu_percent_of_one_core"] for x in rounds[s])
            for s in sides
        },
    }
    out["ratio_vs_seed"] = out["ours"] / out["seed"] if out["seed"] else float("inf")
    if "seed_lists" in rounds:
        out["seed_lists"] = total("seed_lists", case.metric)
        out["ratio_vs_seed_lists"] = out["ours"] / out["seed_lists"]
    cpu = out["server_cpu_ms_per_request"]
    out["cpu_efficiency_vs_seed"] = cpu["seed"] / cpu["ours"] if cpu["ours"] else float("inf")
    if case.against == "tokenizer":
        out["tokenizer_rounds"] = tok_rounds
        out["tokenizer"] = statistics.mean(t["tokens_per_s"] for t in tok_rounds)
        out["ratio"] = out["ours"] / out["tokenizer"]
        out["server_tokenizer_rounds"] = server_tok_rounds
        out["server_tokenizer"] = statistics.mean(t["tokens_per_s"] for t in server_tok_rounds)
        out["ratio_vs_server_tokenizer"] = out["ours"] / out["server_tokenizer"]
    else:
        baseline = "seed_lists" if "seed_lists" in rounds else "seed"
        out["baseline"] = baseline
        out["ratio"] = out["ratio_vs_seed_lists" if baseline == "seed_lists" else "ratio_vs_seed"]
        per_round = [
            o["successes"] / o["duration_s"] / (s["successes"] / s["duration_s"])
            for o, s in zip(rounds["ours"], rounds[baseline], strict=True)
            if s["successes"]
        ]
        out["ratio_per_round"] = per_round
    out["pass"] = out["ratio"] >= case.target and not any(out["failures"].values())
    return out


def markdown(report: dict) -> str:
    lines = [
        "| case | ours | baseline | ratio | target | p50 ours / seed (ms) | server CPU ms/request "
        "(ours / seed) | client CPU (ours / seed) | pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"].values():
        unit = "req/s" if case["metric"] == "requests_per_s" else "tok/s"
        if case["against"] == "tokenizer":
            base = f"{case['tokenizer']:.0f} {unit} (tokenizer alone)"
            ratio = f"{case['ratio']:.0%} (seed: {case['ratio_vs_seed']:.1f}×)"
            if "server_tokenizer" in case:
                ratio += (
                    f"; {case['ratio_vs_server_tokenizer']:.0%} of our own tokenize route "
                    f"alone ({case['server_tokenizer']:.0f} tok/s)"
                )
            target = f"≥ {case['target']:.0%}"
        elif case.get("baseline") == "seed_lists":
            base = f"{case['seed_lists']:.1f} {unit} (seed: float lists, as the issue's)"
            ratio = (
                f"{case['ratio']:.1f}×; {case['ratio_vs_seed']:.1f}× vs a stricter seed that "
                f"encodes base64 ({case['seed']:.1f} {unit})"
            )
            target = f"≥ {case['target']:g}×"
        else:
            base = f"{case['seed']:.1f} {unit} (seed)"
            ratio = f"{case['ratio']:.1f}×"
            target = f"≥ {case['target']:g}×"
        cpu = case["client_cpu_percent"]
        scpu = case["server_cpu_ms_per_request"]
        lines.append(
            f"| {case['title']} | {case['ours']:.1f} {unit} | {base} | {ratio} | {target} | "
            f"{case['ours_p50_ms']:.1f} / {case['seed_p50_ms']:.1f} | "
            f"{scpu['ours']:.2f} / {scpu['seed']:.2f} ({case['cpu_efficiency_vs_seed']:.1f}×) | "
            f"{cpu['ours']:.0f} % / {cpu['seed']:.0f} % | {'yes' if case['pass'] else 'NO'} |"
        )
    if any(c.get("baseline") == "seed_lists" for c in report["cases"].values()):
        lines.append("")
        lines.append(
            "Base64 row: the ratio and pass are against the seed as the issue describes it "
            "(answers `jsonify` of float lists whatever is asked); its p50 and server-CPU "
            "columns are against the stricter seed that encodes base64."
        )
    m = report["machine"]
    lines.append("")
    lines.append(
        f"{m['cpus']} CPUs, load before {m['load_before'][0]:.2f}, after "
        f"{m['load_after'][0]:.2f}; {report['config']['workers']} gunicorn workers each, "
        f"client concurrency {report['config']['concurrency']} (closed loop, same machine"
        f"{pinning(report['config'])}), "
        f"{report['config']['rounds']} alternating rounds of {report['config']['round_seconds']} s;"
        f" max |ours - seed| = {report['max_abs_diff_ours_vs_seed']:.1e}"
        + (
            " (ours serves the default build, its layer-0 table and post-processing folded "
            "into one table of the same size at no cost per request; the seed computes the "
            "plain [0, 0] slice)."
            if report.get("seed_skips_postprocess")
            else "."
        )
    )
    return "\n".join(lines)


def pinning(config: dict) -> str:
    if not config.get("server_cpus") and not config.get("client_cpus"):
        return ", sharing its CPUs with the servers"
    return f"; servers on CPUs {config['server_cpus']}, client on CPUs {config['client_cpus']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=str(SMOLLM2_DIR))
    p.add_argument(
        "--seed-model-dir",
        default=str(SMOLLM2_SEED_DIR),
        help="the seed server's checkpoint: an embed table with its final norm (`make bench`)",
    )
    p.add_argument("--model", default="text-embedding-3-small", help="alias to serve and send")
    p.add_argument("--eval-dir", default=str(DEFAULT_EVAL_DIR))
    p.add_argument("--port", type=int, default=18110, help="ours; the seed server gets port+1")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-seconds", type=float, default=5.0)
    p.add_argument("--warmup-seconds", type=float, default=1.0)
    p.add_argument("--cases", default="", help="subset of case keys, e.g. 'ab'")
    p.add_argument(
        "--server-cpus",
        default="",
        help="pin both servers (and the tokenizer-alone processes) to these CPUs, e.g. 0,1",
    )
    p.add_argument("--client-cpus", default="", help="pin the load client to these CPUs, e.g. 2")
    p.add_argument("--out", default=str(RESULTS_DIR / "side_by_side"))
    args = p.parse_args(argv)
    t0 = time.time()
    report = run(args)
    report["wall_s"] = time.time() - t0
    md = markdown(report)
    print()
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(md + "\n")
    print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0 if all(c["pass"] for c in report["cases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
