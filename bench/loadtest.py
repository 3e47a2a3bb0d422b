"""Reliability load test: a real gunicorn server under steady load while it is reloaded (SIGHUP
and POST /admin/reload, one of them with a broken models list), loses a worker to SIGKILL,
and is finally stopped with SIGTERM while requests are in flight.

    python -m bench.loadtest --models-list models_list.yaml --model text-embedding-3-small \\
        --duration 30 --clients 4 --workers 2

What "0 failed" means here: every request got a 200 whose vectors (and usage) equal the
server's answer to the same request made alone before the load started, and whose
X-Request-ID echoes the one sent. A request whose connection broke before a complete response
arrived (reset, closed, or a body cut short) is sent again, as the openai client does with
connection errors, and counted as a retry, not a success of the first attempt. Only the
SIGKILLed worker can cause one: the requests it was serving die with it, possibly after their
status line went out. The report gives each retry's time after the kill, and the slow test
checks that none happened anywhere else (reloads and SIGTERM retry nothing). An HTTP error
status, a wrong vector or a timeout is a failure, never retried.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import psutil
import yaml

from bench.common import synthetic_texts
from zeroth.launch import GunicornServer, free_port
from zeroth.models_list import load_models_list

REPO = Path(__file__).resolve().parent.parent
# A unicode key: the test also shows that UTF-8 keys survive a real server's header handling.
API_KEY = "sk-loadtest-ключ-🔑"
EXTRA_ALIAS = "loadtest-extra"
# The connection broke before a complete response: safe to send the (idempotent) request again.
RETRYABLE = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ConnectionRefusedError,
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
)


@dataclass
class Report:
    duration_s: float = 0.0
    clients: int = 0
    workers: int = 0
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    retries: int = 0
    retry_times_after_kill_s: list[float] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    requests_per_s: float = 0.0
    worker_replaced_s: float | None = None
    shutdown_in_flight: int = 0
    shutdown_ok: int = 0
    shutdown_exit_code: int | None = None
    shutdown_s: float = 0.0


class Server(GunicornServer):
    """Our server as deployed, API keys on, gthread with 2 threads (the slow-client setting)."""

    def __init__(self, models_list: Path, workers: int, port: int, log: Path, threads: int = 2):
        env = {
            "ZEROTH_THREADS": str(threads),
            "ZEROTH_API_KEYS": API_KEY,
            "ZEROTH_GRACEFUL_TIMEOUT": "20",
        }
        super().__init__(models_list, workers=workers, port=port, env=env, log_path=log)

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]


def _headers(request_id: str | None = None) -> dict:
    headers = {
        "Authorization": b"Bearer " + API_KEY.encode("utf-8"),
        "Content-Type": "application/json",
    }
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=_headers())
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def aliases(port: int) -> list[str]:
    status, body = request(port, "GET", "/v1/models")
    return [m["id"] for m in orjson.loads(body)["data"]] if status == 200 else []


def make_bodies(model: str, texts: list[str], count: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        batch = rng.sample(texts, rng.randint(1, min(16, len(texts))))
        fmt = "base64" if i % 2 else "float"
        bodies.append(orjson.dumps({"model": model, "input": batch, "encoding_format": fmt}))
    return bodies


def references(port: int, bodies: list[bytes]) -> list[dict]:
    """Each body's answer, asked for alone, before any load: what every later answer must be."""
    out = []
    for body in bodies:
        status, data = request(port, "POST", "/v1/embeddings", body)
        if status != 200:
            raise RuntimeError(f"reference request failed: {status} {data[:300]!r}")
        parsed = orjson.loads(data)
        out.append({"data": parsed["data"], "usage": parsed["usage"]})
    return out


class Client(threading.Thread):
    """Closed loop over one keep-alive connection, as an indexing pipeline would run."""

    def __init__(self, n: int, port: int, bodies, refs, stop: threading.Event):
        super().__init__(name=f"load-client-{n}", daemon=True)
        self.n, self.port, self.bodies, self.refs, self.stop = n, port, bodies, refs, stop
        self.ok = 0
        self.failures: list[str] = []
        self.retry_at: list[float] = []
        self.latencies: list[float] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = self.n
        while not self.stop.is_set():
            i += 1
            k = i % len(self.bodies)
            rid = f"lt-{self.n}-{i}"
            start = time.perf_counter()
            for _attempt in range(5):
                try:
                    conn.request("POST", "/v1/embeddings", self.bodies[k], _headers(rid))
                    resp = conn.getresponse()
                    data = resp.read()
                except RETRYABLE:
                    self.retry_at.append(time.monotonic())
                    conn.close()
                    continue
                except Exception as exc:  # a timeout, a malformed response
                    self.failures.append(f"{rid}: {type(exc).__name__}: {exc}")
                    conn.close()
                    break
                self._check(rid, k, resp, data, time.perf_counter() - start)
                break
            else:
                self.failures.append(f"{rid}: still no response after 5 connection retries")
        conn.close()

    def _check(self, rid: str, k: int, resp, data: bytes, seconds: float) -> None:
        if resp.status != 200:
            self.failures.append(f"{rid}: HTTP {resp.status}: {data[:200]!r}")
            return
        if resp.getheader("X-Request-ID") != rid:
            self.failures.append(
                f"{rid}: X-Request-ID came back as {resp.getheader('X-Request-ID')}"
            )
            return
        body = orjson.loads(data)
        if body["data"] != self.refs[k]["data"] or body["usage"] != self.refs[k]["usage"]:
            self.failures.append(f"{rid}: vectors differ from the single-request reference")
            return
        self.ok += 1
        self.latencies.append(seconds)


def _write_lists(models_list: Path, folder: Path) -> tuple[Path, Path, str]:
    """The live list (absolute paths, rewritten during the run) and its variant with one more
    alias, so that each reload is visible in /v1/models."""
    parsed = load_models_list(models_list)
    models = {alias: {"path": str(e.path)} | _options(e) for alias, e in parsed.models.items()}
    base = {"models": models, "default": parsed.default}
    extra = {
        "models": models | {EXTRA_ALIAS: next(iter(models.values()))},
        "default": parsed.default,
    }
    live = folder / "models_list.yaml"
    variant = folder / "models_list.extra.yaml"
    live.write_text(yaml.safe_dump(base, sort_keys=False))
    variant.write_text(yaml.safe_dump(extra, sort_keys=False))
    return live, variant, live.read_text()


def _options(entry) -> dict:
    return entry.model_dump(mode="json", exclude={"path"}, exclude_defaults=True)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def run(
    models_list: Path,
    model: str,
    texts: list[str],
    *,
    duration: float = 20.0,
    clients: int = 4,
    workers: int = 2,
    port: int | None = None,
    workdir: Path | None = None,
) -> Report:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="zeroth-loadtest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    live, variant, base_text = _write_lists(Path(models_list), workdir)
    server = Server(live, workers, port or free_port(), workdir / "server.log")
    report = Report(duration_s=duration, clients=clients, workers=workers)
    try:
        server.start()
        port = server.port
        bodies = make_bodies(model, texts, 24)
        refs = references(port, bodies)
        stop = threading.Event()
        threads = [Client(n, port, bodies, refs, stop) for n in range(clients)]
        t0 = time.monotonic()

        def event(what: str) -> None:
            report.events.append((round(time.monotonic() - t0, 2), what))

        for t in threads:
            t.start()
        kill_at = _chaos(server, port, live, variant, base_text, duration, t0, event, report)
        remaining = duration - (time.monotonic() - t0)
        if remaining > 0:
            time.sleep(remaining)
        stop.set()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - t0
        latencies = sorted(s for t in threads for s in t.latencies)
        report.ok = sum(t.ok for t in threads)
        # The chaos steps' failures are already in the report; the clients' join them.
        report.failures += [f for t in threads for f in t.failures]
        report.failed = len(report.failures)
        retry_at = sorted(r for t in threads for r in t.retry_at)
        report.retries = len(retry_at)
        report.retry_times_after_kill_s = [
            round(r - kill_at, 3) if kill_at else round(r - t0, 3) for r in retry_at
        ]
        report.requests_per_s = round(report.ok / elapsed, 1)
        if latencies:
            report.latency_ms_p50 = round(latencies[len(latencies) // 2] * 1000, 2)
            report.latency_ms_p99 = round(latencies[int(len(latencies) * 0.99)] * 1000, 2)
        _shutdown(server, port, model, texts, report)
    finally:
        server.stop()
    return report


def _chaos(server, port, live, variant, base_text, duration, t0, event, report) -> float | None:
    """Reloads and a worker kill, spread over the run; returns when the worker was killed."""

    def at(fraction: float) -> None:
        delay = t0 + duration * fraction - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    at(0.15)
    live.write_text(variant.read_text())
    os.kill(server.proc.pid, signal.SIGHUP)
    event("SIGHUP: list with an extra alias")
    if _wait_for(lambda: EXTRA_ALIAS in aliases(port), 30):
        event("extra alias served")
    else:
        report.failures.append("SIGHUP reload never served the extra alias")

    at(0.35)
    live.write_text(base_text)
    status, body = request(port, "POST", "/admin/reload")
    event(f"POST /admin/reload: {status}")
    if status != 200:
        report.failures.append(f"admin reload answered {status}: {body[:300]!r}")
    if _wait_for(lambda: EXTRA_ALIAS not in aliases(port), 30):
        event("extra alias gone")
    else:
        report.failures.append("admin reload never removed the extra alias")

    at(0.5)
    # After the reloads, old workers may still be finishing their requests: wait until only
    # the new generation is left, so the victim is a worker gunicorn must replace.
    _wait_for(lambda: len(server.worker_pids()) == server.workers, 30)
    victim = random.choice(server.worker_pids())
    before = set(server.worker_pids())
    kill_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    event(f"SIGKILL worker {victim}")
    replaced = _wait_for(
        lambda: len(server.worker_pids()) == len(before) and victim not in server.worker_pids(), 30
    )
    if replaced:
        report.worker_replaced_s = round(time.monotonic() - kill_at, 2)
        event("worker replaced")
    else:
        report.failures.append(f"worker {victim} was not replaced")

    at(0.65)
    live.write_text("models: [\n")  # broken: the old models must keep serving
    os.kill(server.proc.pid, signal.SIGHUP)
    event("SIGHUP: broken list")
    if not _wait_for(lambda: "reload failed" in server.tail(200_000), 30):
        report.failures.append("a broken list was not reported in the log")
    status, body = request(port, "POST", "/admin/reload")
    event(f"POST /admin/reload with the broken list: {status}")
    if status != 400 or b"reload_failed" not in body:
        report.failures.append(f"admin reload of a broken list answered {status}: {body[:200]!r}")

    at(0.8)
    live.write_text(base_text)
    os.kill(server.proc.pid, signal.SIGHUP)
    event("SIGHUP: list restored")
    return kill_at


def _shutdown(server: Server, port: int, model: str, texts: list[str], report: Report) -> None:
    """SIGTERM while requests are in flight: each must still be answered in full."""
    body = orjson.dumps({"model": model, "input": (texts * 64)[:512]})
    conns = []
    for _ in range(report.workers * 2):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/v1/models", headers=_headers())  # accepted and kept alive
        conn.getresponse().read()
        conns.append(conn)
    for conn in conns:
        conn.request("POST", "/v1/embeddings", body, _headers())
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    report.shutdown_in_flight = len(conns)
    for conn in conns:
        try:
            resp = conn.getresponse()
            data = resp.read()
            if resp.status == 200 and len(orjson.loads(data)["data"]) == 512:
                report.shutdown_ok += 1
            else:
                report.failures.append(f"in flight at SIGTERM: HTTP {resp.status}")
        except Exception as exc:
            report.failures.append(f"in flight at SIGTERM: {type(exc).__name__}: {exc}")
        finally:
            conn.close()
    try:
        report.shutdown_exit_code = server.proc.wait(30)
    except subprocess.TimeoutExpired:
        report.failures.append("gunicorn did not exit within 30 s of SIGTERM")
    report.shutdown_s = round(time.monotonic() - start, 2)
    report.failed = len(report.failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-list", default=str(REPO / "models_list.yaml"))
    parser.add_argument("--model", default="text-embedding-3-small")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    texts = synthetic_texts(12, count=200)
    report = run(
        Path(args.models_list),
        args.model,
        texts,
        duration=args.duration,
        clients=args.clients,
        workers=args.workers,
        port=args.port,
    )
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
