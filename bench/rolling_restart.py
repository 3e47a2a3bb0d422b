"""Two replicas behind nginx: a rolling restart under steady load, then a slow client.

    python -m bench.rolling_restart --save rolling_restart.json     # or: make rolling-restart

Set-up: two replicas of the server as deployed (zeroth.launch.GunicornServer, 2 workers each,
each on its own fixed port, ZEROTH_DRAIN_SECONDS=--drain) behind nginx (zeroth.proxy.NginxProxy:
deploy/nginx/zeroth.conf.template, the file compose uses too). Closed-loop clients, each on its
own kept-alive connection to nginx, send embeddings requests with an X-Request-ID and retry
nothing: whatever the proxy does not absorb is a failure. A request fails when no complete
response arrives (a broken connection, 30 s without an answer), its status is not 200, or its
vectors differ from the answer to the same body asked alone before the load started.

Phases, one after the other under the same load:
1. steady (--steady s);
2. rolling restart, one replica at a time, as a Deployment with maxUnavailable 0 does it:
   SIGTERM to the master alone (Kubernetes and Docker signal the container's first process);
   its /ready answers 503 while it still serves (the drain); its listener closes (connecting is
   refused: nginx tries the other replica and marks this one failed); the master exits 0 once
   its workers have finished their requests; a new one starts on the same port and is ready;
   the next replica is touched only once nginx sends requests to the new one (nginx only
   learns from its passive checks, after fail_timeout);
3. steady again (--steady s);
4. slow client: for --slow s a client sends a request header to nginx one byte every 4 s
   (reconnecting when nginx drops it at client_header_timeout); then, as the control, the same
   client for --slow s straight at replica A, bypassing nginx, where it holds a worker until
   gunicorn's worker timeout (--worker-timeout) kills it. Worker timeouts are counted in the
   replicas' logs; the load goes on through nginx throughout.

Latency is per request, from sending to the last byte of the answer, through nginx.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import DEFAULT_EVAL_DIR, LatencyStats, load_dataset, synthetic_texts
from zeroth.launch import REPO, GunicornServer, free_port, refuses_connections, status_of
from zeroth.proxy import NginxProxy

WORKER_TIMEOUT_LINE = "WORKER TIMEOUT"
SLOW_BYTE_EVERY = 4.0


@dataclass
class Done:
    start: float  # time.monotonic() when sent
    seconds: float
    ok: bool
    request_id: str
    error: str = ""


class LoadClient(threading.Thread):
    """One kept-alive connection to `port`, requests back to back, no retries."""

    def __init__(self, n: int, port: int, bodies: list[bytes], refs: list, stop: threading.Event):
        super().__init__(name=f"load-{n}", daemon=True)
        self.n, self.port, self.bodies, self.refs, self.stop_event = n, port, bodies, refs, stop
        self.done: list[Done] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = 0
        while not self.stop_event.is_set():
            i += 1
            k = (i * 7 + self.n) % len(self.bodies)
            rid = f"rr-{self.n}-{i}"
            headers = {"Content-Type": "application/json", "X-Request-ID": rid}
            start = time.monotonic()
            try:
                conn.request("POST", "/v1/embeddings", self.bodies[k], headers)
                resp = conn.getresponse()
                data = resp.read()
            except Exception as exc:  # broken connection, timeout: the proxy let it through
                self.done.append(Done(start, time.monotonic() - start, False, rid, repr(exc)))
                conn.close()
                continue
            seconds = time.monotonic() - start
            error = ""
            if resp.status != 200:
                error = f"HTTP {resp.status}: {data[:200]!r}"
            elif orjson.loads(data)["data"] != self.refs[k]:
                error = "vectors differ from the reference"
            self.done.append(Done(start, seconds, not error, rid, error))
            if resp.will_close:
                conn.close()
        conn.close()


class SlowClient(threading.Thread):
    """Sends a request header one byte every SLOW_BYTE_EVERY s; reconnects when dropped."""

    HEAD = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: zeroth\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n{}"
    )

    def __init__(self, port: int, stop: threading.Event):
        super().__init__(name="slow-client", daemon=True)
        self.port, self.stop_event = port, stop
        self.connections: list[dict] = []
        self.bytes_sent = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            record = {"opened": time.monotonic(), "bytes": 0, "ended_by": "client"}
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError as exc:
                record["ended_by"] = f"connect: {exc!r}"
                self.connections.append(record)
                self.stop_event.wait(SLOW_BYTE_EVERY)
                continue
            with sock:
                sock.setblocking(False)
                for byte in self.HEAD:
                    try:
                        sock.send(bytes([byte]))
                    except OSError:
                        record["ended_by"] = "server closed"
                        break
                    record["bytes"] += 1
                    self.bytes_sent += 1
                    if self._wait_closed(sock):
                        record["ended_by"] = "server closed"
                        break
                    if self.stop_event.is_set():
                        break
            record["seconds"] = round(time.monotonic() - record.pop("opened"), 2)
            self.connections.append(record)

    def _wait_closed(self, sock: socket.socket) -> bool:
        """Wait SLOW_BYTE_EVERY s (or until stopped); True if the server closed meanwhile."""
        deadline = time.monotonic() + SLOW_BYTE_EVERY
        while time.monotonic() < deadline and not self.stop_event.is_set():
            try:
                if sock.recv(4096) == b"":
                    return True
                return True  # any answer (408, 400) ends this connection's attempt too
            except BlockingIOError:
                pass
            except OSError:
                return True
            time.sleep(0.1)
        return False


def worker_timeouts(server: GunicornServer) -> int:
    return server.log_text().count(WORKER_TIMEOUT_LINE)


def stats(done: list[Done]) -> dict:
    s = LatencyStats.of([d.seconds * 1000 for d in done])
    return {
        "requests": len(done),
        "failed": sum(not d.ok for d in done),
        "latency_ms_p50": round(s.p50, 2),
        "latency_ms_p99": round(s.p99, 2),
        "latency_ms_max": round(s.max, 2),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path):
        self.args, self.folder = args, folder
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str]] = []
        env = {
            "ZEROTH_DRAIN_SECONDS": str(args.drain),
            "ZEROTH_TIMEOUT": str(args.worker_timeout),
            "ZEROTH_LOG_LEVEL": "info",
        }
        self.replicas = {
            name: GunicornServer(
                args.models_list,
                workers=args.workers,
                port=free_port(),
                env=env,
                log_path=folder / f"replica-{name}.log",
            )
            for name in ("A", "B")
        }
        self.proxy = NginxProxy(
            [f"127.0.0.1:{r.port}" for r in self.replicas.values()], folder=folder / "nginx"
        )

    def event(self, what: str) -> float:
        now = time.monotonic()
        self.events.append((round(now - self.t0, 3), what))
        print(f"{now - self.t0:7.2f} s  {what}", file=sys.stderr)
        return now

    def served_by(self, replica: GunicornServer, since: float, until: float | None = None) -> int:
        """Requests nginx passed to `replica` (their last try) that started in [since, until)."""
        address = f"127.0.0.1:{replica.port}"
        offset = time.time() - time.monotonic()  # nginx logs wall-clock times
        lo, hi = since + offset, (until if until is not None else time.monotonic()) + offset
        return sum(
            1
            for r in self.proxy.log_records()
            if lo <= r["msec"] - r["request_time"] < hi
            and r["upstream"].rsplit(", ", 1)[-1] == address
        )

    def restart(self, name: str) -> dict:
        replica, args = self.replicas[name], self.args
        out: dict = {"replica": name, "port": replica.port}
        sigterm = self.event(f"SIGTERM replica {name}")
        replica.terminate()
        # Readiness first, while it still serves: what a readiness-routing balancer acts on.
        while (status := status_of(f"{replica.url}/ready")) == 200:
            time.sleep(0.01)
        out["ready_503_after_s"] = round(time.monotonic() - sigterm, 3)
        out["ready_status_while_draining"] = status
        self.event(f"replica {name}: /ready {status}")
        while not refuses_connections(replica.port):
            time.sleep(0.01)
        closed = self.event(f"replica {name}: listener closed (connections refused)")
        out["listener_closed_after_s"] = round(closed - sigterm, 3)
        out["served_while_draining"] = self.served_by(replica, sigterm, closed)
        out["exit_code"] = replica.wait(timeout=args.worker_timeout + 60)
        exited = self.event(f"replica {name}: exited {out['exit_code']}")
        out["exit_after_s"] = round(exited - sigterm, 3)
        replica.start()
        ready = self.event(f"replica {name}: new process ready on port {replica.port}")
        out["down_s"] = round(ready - closed, 3)
        # Nothing may be sent to it between the listener closing and the new process listening.
        out["sent_while_down"] = self.served_by(replica, closed + 0.05, ready)
        deadline = time.monotonic() + 60
        while self.served_by(replica, ready) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx sent nothing to the new replica {name} in 60 s")
            time.sleep(0.05)
        back = self.event(f"replica {name}: nginx sends it requests again")
        out["back_in_rotation_after_ready_s"] = round(back - ready, 3)
        out["restart_s"] = round(back - sigterm, 3)
        return out

    def slow_phase(self, port: int, label: str, seconds: float) -> dict:
        before = {name: worker_timeouts(r) for name, r in self.replicas.items()}
        stop = threading.Event()
        client = SlowClient(port, stop)
        start = self.event(f"slow client starts: {label}")
        client.start()
        time.sleep(seconds)
        stop.set()
        client.join()
        end = self.event(f"slow client stops: {label}")
        time.sleep(0.5)  # the master logs a timeout as it kills the worker
        after = {name: worker_timeouts(r) for name, r in self.replicas.items()}
        return {
            "target": label,
            "seconds": round(end - start, 2),
            "byte_every_s": SLOW_BYTE_EVERY,
            "bytes_sent": client.bytes_sent,
            "connections": client.connections,
            "worker_timeouts": sum(after[n] - before[n] for n in after),
            "window": (start, end),
        }

    def run(self) -> dict:
        args = self.args
        for name, replica in self.replicas.items():
            replica.start()
            self.event(f"replica {name} ready on port {replica.port}")
        self.proxy.start()
        self.event(f"nginx on port {self.proxy.port}")
        bodies, refs = make_requests(self.proxy.port, args)
        stop = threading.Event()
        clients = [LoadClient(n, self.proxy.port, bodies, refs, stop) for n in range(args.clients)]
        load_start = self.event(f"load: {args.clients} clients")
        for c in clients:
            c.start()
        try:
            time.sleep(args.steady)
            restarts_start = time.monotonic()
            restarts = [self.restart(name) for name in self.replicas]
            restarts_end = time.monotonic()
            time.sleep(args.steady)
            slow = None
            if args.slow > 0:
                slow = [
                    self.slow_phase(self.proxy.port, "nginx", args.slow),
                    self.slow_phase(self.replicas["A"].port, "replica A directly", args.slow),
                ]
                time.sleep(2)  # the load after the control, once the killed worker is back
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=40)
            load_end = self.event("load stopped")
        everything = sorted((d for c in clients for d in c.done), key=lambda d: d.start)

        def window(lo: float, hi: float) -> list[Done]:
            return [d for d in everything if lo <= d.start < hi]

        # The control (the slow client straight at a replica) is there to do harm: what the
        # load meets then is reported with it, not counted with the rest.
        control_start = slow[1]["window"][0] if slow else load_end + 1
        done = window(load_start, control_start)

        steady = window(load_start, restarts_start) + window(
            restarts_end, restarts_end + args.steady
        )
        during = window(restarts_start, restarts_end)
        wall = time.time() - time.monotonic()  # nginx logs wall-clock times
        records = [
            r
            for r in self.proxy.log_records()
            if r["msec"] - r["request_time"] < control_start + wall
        ]
        result = {
            "replicas": 2,
            "workers_per_replica": args.workers,
            "clients": args.clients,
            "drain_seconds": args.drain,
            "worker_timeout_s": args.worker_timeout,
            "model": args.model,
            "seconds": round(min(control_start, load_end) - load_start, 1),
            "requests": len(done),  # all but those sent during the control
            "failed": sum(not d.ok for d in done),
            "failures": [f"{d.request_id}: {d.error}" for d in done if not d.ok][:20],
            "steady": stats(steady),
            "during_restarts": stats(during) | {"seconds": round(restarts_end - restarts_start, 1)},
            "restarts": restarts,
            "nginx_requests": len(records),
            # Requests nginx passed to a second replica after the first refused or broke (the
            # control not counted, like the rest).
            "nginx_retried": sum(", " in r["upstream"] for r in records),
            "nginx_retried_detail": [
                f"{r['upstream']} -> {r['upstream_status']}"
                for r in records
                if ", " in r["upstream"]
            ][:20],
            "events": self.events,
        }
        if slow:
            for phase in slow:
                lo, hi = phase.pop("window")
                sent = window(lo, hi if phase is slow[0] else load_end + 1)
                phase["load"] = stats(sent)
                phase["failures"] = [f"{d.request_id}: {d.error}" for d in sent if not d.ok][:20]
            result["slow_client"] = slow
        return result

    def close(self) -> None:
        self.proxy.stop()
        for replica in self.replicas.values():
            replica.stop()


def make_requests(port: int, args: argparse.Namespace) -> tuple[list[bytes], list]:
    """Request bodies of 1 to --batch texts, and each one's answer asked alone, before the load."""
    try:
        texts = load_dataset(args.dataset, args.eval_dir)
    except (FileNotFoundError, ValueError):
        texts = synthetic_texts(24, count=2000)
    rng = random.Random(0)
    bodies, refs = [], []
    for _ in range(args.bodies):
        batch = rng.sample(texts, rng.randint(1, args.batch))
        body = orjson.dumps({"model": args.model, "input": batch, "encoding_format": "base64"})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"reference request: HTTP {resp.status} {data[:300]!r}")
        bodies.append(body)
        refs.append(orjson.loads(data)["data"])
    return bodies, refs


def print_summary(r: dict) -> None:
    s, d = r["steady"], r["during_restarts"]
    print(
        f"{r['requests']} requests through nginx in {r['seconds']} s "
        f"({r['clients']} clients, 2 replicas x {r['workers_per_replica']} workers): "
        f"{r['failed']} failed; nginx passed {r['nginx_retried']} to the other replica "
        "(the control, last line, apart)"
    )
    print(
        f"  steady           {s['requests']:>7} requests  p50 {s['latency_ms_p50']:7.1f} ms  "
        f"p99 {s['latency_ms_p99']:7.1f} ms  max {s['latency_ms_max']:7.1f} ms"
    )
    print(
        f"  during restarts  {d['requests']:>7} requests  p50 {d['latency_ms_p50']:7.1f} ms  "
        f"p99 {d['latency_ms_p99']:7.1f} ms  max {d['latency_ms_max']:7.1f} ms  "
        f"({d['seconds']} s)"
    )
    for x in r["restarts"]:
        print(
            f"  replica {x['replica']}: /ready {x['ready_status_while_draining']} after "
            f"{x['ready_503_after_s']} s, {x['served_while_draining']} served while draining, "
            f"listener closed at {x['listener_closed_after_s']} s, exit {x['exit_code']} at "
            f"{x['exit_after_s']} s, down {x['down_s']} s ({x['sent_while_down']} sent to it), "
            f"back in nginx's rotation {x['back_in_rotation_after_ready_s']} s after ready"
        )
    for p in r.get("slow_client", []):
        load = p["load"]
        print(
            f"  slow client -> {p['target']}: {p['seconds']} s, {p['bytes_sent']} bytes over "
            f"{len(p['connections'])} connection(s), {p['worker_timeouts']} worker timeout(s); "
            f"load meanwhile {load['requests']} requests, {load['failed']} failed, "
            f"p99 {load['latency_ms_p99']:.1f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-list", type=Path, default=REPO / "models_list.yaml")
    p.add_argument("--model", default="text-embedding-3-small")
    p.add_argument("--dataset", default="sts", help="texts: sts, synthetic or a file")
    p.add_argument("--eval-dir", default=str(DEFAULT_EVAL_DIR))
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers per replica")
    p.add_argument("--clients", type=int, default=4, help="closed-loop clients")
    p.add_argument("--batch", type=int, default=16, help="most texts per request")
    p.add_argument("--bodies", type=int, default=64, help="distinct request bodies")
    p.add_argument("--steady", type=float, default=20.0, help="seconds before and after")
    p.add_argument("--drain", type=float, default=2.0, help="replicas' ZEROTH_DRAIN_SECONDS")
    p.add_argument(
        "--worker-timeout", type=int, default=60, help="replicas' ZEROTH_TIMEOUT (deployed: 60)"
    )
    p.add_argument(
        "--slow",
        type=float,
        default=None,
        help="seconds of each slow-client phase (default: worker timeout + 10; 0: none)",
    )
    p.add_argument("--keep", type=Path, help="keep logs (replicas, nginx) in this folder")
    p.add_argument("--save", type=Path, help="also write the JSON result here")
    p.add_argument("--json", action="store_true", help="print the JSON result")
    args = p.parse_args(argv)
    if args.slow is None:
        args.slow = args.worker_timeout + 10.0
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / ".cache" / "tiktoken"))

    with tempfile.TemporaryDirectory(prefix="zeroth-rolling-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        bench = Bench(args, folder)
        try:
            result = bench.run()
        finally:
            bench.close()
    if args.save:
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_summary(result)
    ok = result["failed"] == 0 and all(x["exit_code"] == 0 for x in result["restarts"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
