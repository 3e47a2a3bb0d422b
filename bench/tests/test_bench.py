"""The benchmark client's datasets, statistics and response checks, and a short real run."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from werkzeug.serving import make_server

from bench.client import (
    Sample,
    build_bodies,
    build_parser,
    check_response,
    main,
    run_closed_loop,
    run_load,
    summarise,
)
from bench.common import (
    LatencyStats,
    batches,
    file_texts,
    load_dataset,
    percentile,
    sts_sentences,
    synthetic_texts,
)


def write_sts(eval_dir: Path, rows: list[list[str]]) -> Path:
    (eval_dir / "stsbenchmark").mkdir(parents=True)
    path = eval_dir / "stsbenchmark" / "sts-dev.csv"
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return eval_dir


def test_sts_sentences_are_columns_6_and_7(tmp_path: Path) -> None:
    eval_dir = write_sts(
        tmp_path,
        [
            ["main-captions", "MSRvid", "2012test", "0000", "5.000", "A man runs.", "A man jogs."],
            ["main-news", "x", "2012", "0001", "1.0", 'He said "no".', "Café au lait", "src"],
            ["short", "row"],
        ],
    )
    assert sts_sentences(eval_dir) == [
        "A man runs.",
        "A man jogs.",
        'He said "no".',
        "Café au lait",
    ]
    assert load_dataset("sts", eval_dir) == sts_sentences(eval_dir)


def test_sts_without_pairs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sentence pairs"):
        sts_sentences(write_sts(tmp_path, [["only", "five", "columns", "x", "y"]]))


def test_synthetic_and_file_datasets(tmp_path: Path) -> None:
    texts = synthetic_texts(7, count=5, seed=3)
    assert len(texts) == 5 and all(len(t.split()) == 7 for t in texts)
    assert synthetic_texts(7, count=5, seed=3) == texts != synthetic_texts(7, count=5, seed=4)
    f = tmp_path / "texts.txt"
    f.write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    assert file_texts(f) == ["first line", "second line"]
    assert load_dataset(str(f)) == ["first line", "second line"]
    assert len(load_dataset("synthetic", synthetic_length=3)[0].split()) == 3


def test_batches_cycle_through_the_texts() -> None:
    texts = ["a", "b", "c", "d", "e"]
    assert batches(texts, 2) == [["a", "b"], ["c", "d"]]
    assert batches(texts, 3, count=3) == [["a", "b", "c"], ["d", "e", "a"], ["b", "c", "d"]]
    assert batches(texts, 8) == [["a", "b", "c", "d", "e", "a", "b", "c"]]


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = sorted(np.random.default_rng(0).exponential(size=37).tolist())
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_latency_stats_and_summary() -> None:
    samples = [
        Sample(0.0, 0.010, True, 4, 40),
        Sample(0.1, 0.030, True, 4, 44),
        Sample(0.2, 0.500, False, 0, 0, "HTTP 500"),
        Sample(0.3, 0.020, True, 4, 36),
    ]
    s = summarise(samples, wall=2.0, cpu_s=0.5)
    assert (s.requests, s.successes, s.failures) == (4, 3, 1)
    assert s.success_rate == 0.75
    assert s.requests_per_s == 1.5 and s.inputs_per_s == 6.0 and s.tokens_per_s == 60.0
    assert s.latency_ms.p50 == pytest.approx(20.0) and s.latency_ms.max == pytest.approx(30.0)
    assert s.latency_ms.mean == pytest.approx(20.0)
    assert s.client_cpu_percent_of_one_core == 25.0
    assert s.errors == {"HTTP 500": 1}
    assert np.isnan(LatencyStats.of([]).p99)


def body(n: int, fmt: str, dim: int = 3, tokens: int = 9) -> bytes:
    vecs = np.arange(n * dim, dtype="<f4").reshape(n, dim)
    emb = [base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist() for v in vecs]
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(emb)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": "m", "usage": usage})


@pytest.mark.parametrize("validate", ["light", "full"])
@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_check_response(validate: str, fmt: str) -> None:
    assert check_response(200, body(3, fmt), 3, fmt, validate) == (True, 9, "")
    ok, _, err = check_response(200, body(2, fmt), 3, fmt, validate)
    assert not ok and "2 embeddings for 3 inputs" in err
    assert check_response(503, b"{}", 3, fmt, validate)[:2] == (False, 0)


def test_full_check_catches_broken_vectors() -> None:
    doc = orjson.loads(body(2, "float"))
    doc["data"][1]["embedding"] = [1.0]
    ok, _, err = check_response(200, orjson.dumps(doc), 2, "float", "full")
    assert not ok and "inconsistent dimensions" in err
    ok, _, err = check_response(200, b"not json", 2, "float", "full")
    assert not ok and "bad body" in err


def test_build_bodies_single_input_is_a_string() -> None:
    (one, n), *_ = build_bodies(["x", "y"], "m", 1, "base64", None)
    assert n == 1 and orjson.loads(one) == {"model": "m", "input": "x", "encoding_format": "base64"}
    bodies = build_bodies(["x", "y", "z"], "m", 2, "float", 2)
    assert [orjson.loads(b)["input"] for b, _ in bodies] == [["x", "y"], ["z", "x"]]


def test_parser_rate_and_exclusive_stops() -> None:
    args = build_parser().parse_args(["--request_rate", "inf", "--num_requests", "5"])
    assert args.request_rate == float("inf") and args.num_requests == 5
    assert build_parser().parse_args(["--request_rate", "12.5"]).request_rate == 12.5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--duration", "1", "--num_requests", "5"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--request_rate", "0"])


@pytest.fixture(scope="module")
def live_url(app) -> Iterator[str]:
    """The tiny app from conftest behind a real (threaded werkzeug) HTTP server."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


TEXTS = ["the cat sat on the mat", "hello world", "a quick brown dog ran", "lazy"]


@pytest.mark.parametrize("transport", ["epoll", "raw", "aiohttp"])
@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_short_run_against_a_live_server(live_url: str, transport: str, fmt: str) -> None:
    import asyncio

    bodies = build_bodies(TEXTS, "tiny", 2, fmt, None)
    kw = dict(encoding_format=fmt, concurrency=3, duration=None, num_requests=12, validate="full")
    if transport == "epoll":
        samples, wall = run_closed_loop(live_url + "/embeddings", bodies, **kw)
    else:
        samples, wall = asyncio.run(
            run_load(live_url + "/embeddings", bodies, transport=transport, **kw)
        )
    s = summarise(samples, wall, 0.0)
    assert s.requests == 12 and s.failures == 0, s.errors
    # Tokens come from each reply's usage: BOS + words, for the two alternating batches.
    assert {sample.tokens for sample in samples} == {(1 + 6) + (1 + 2), (1 + 5) + (1 + 1)}
    assert s.inputs_per_s == pytest.approx(24 / wall)


def test_failures_are_counted(live_url: str) -> None:
    import asyncio

    bodies = build_bodies(TEXTS, "no-such-model", 2, "float", None)
    samples, wall = asyncio.run(
        run_load(
            live_url + "/embeddings",
            bodies,
            concurrency=2,
            duration=None,
            num_requests=4,
            request_rate=200.0,
        )
    )
    s = summarise(samples, wall, 0.0)
    assert (s.requests, s.failures, s.success_rate) == (4, 4, 0.0)
    assert s.errors == {"HTTP 404": 4}
    samples, wall = run_closed_loop(
        live_url + "/embeddings", bodies, concurrency=2, duration=None, num_requests=4
    )
    assert summarise(samples, wall, 0.0).errors == {"HTTP 404": 4}


def test_closed_loop_counts_refused_connections() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bodies = build_bodies(TEXTS, "tiny", 2, "float", None)
    samples, wall = run_closed_loop(
        f"http://127.0.0.1:{port}/v1/embeddings",
        bodies,
        concurrency=2,
        duration=None,
        num_requests=5,
    )
    s = summarise(samples, wall, 0.0)
    assert (s.requests, s.failures) == (5, 5)
    assert all(e.startswith("ConnectionRefusedError") for e in s.errors)


def test_cli_json(live_url: str, tmp_path: Path, capsys) -> None:
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS), encoding="utf-8")
    plot = tmp_path / "plot.png"
    rc = main(
        [
            "--api_url",
            live_url,
            "--model",
            "tiny",
            "--dataset",
            str(data),
            "--batch_size",
            "3",
            "--num_requests",
            "6",
            "--concurrency",
            "2",
            "--json",
            "--no-progress",
            "--plot",
            str(plot),
        ]
    )
    doc = orjson.loads(capsys.readouterr().out)
    assert rc == 0 and doc["successes"] == 6 and doc["config"]["request_rate"] == "inf"
    assert doc["tokens_per_s"] > 0 and doc["client_cpu_s"] >= 0
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("impl", ["tokenizers", "server", "embed"])
def test_tokenizer_rate_counts_the_ids_of_each_route(tiny_ckpt: Path, impl: str) -> None:
    from bench.tokenizer_rate import tokenizer_rate

    texts = ["hello world", "the cat sat on the mat", "a"] * 4
    result = tokenizer_rate(tiny_ckpt, texts, batch_size=4, processes=1, duration=0.3, impl=impl)
    assert result["impl"] == impl and result["batches_per_s"] > 0
    # Every route gives the same ids, so the same tokens per batch (3 batches cycle).
    per_batch = result["tokens_per_s"] / result["batches_per_s"]
    assert per_batch == pytest.approx(sum(len(t.split()) for t in texts) / 3, rel=0.35)
