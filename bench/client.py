"""Load client for OpenAI-compatible /v1/embeddings servers.

In the spirit of OpenVINO Model Server's benchmark client: closed loop (`--request_rate inf`,
`--concurrency` workers back to back) or open loop (Poisson arrivals at `--request_rate` per
second, at most `--concurrency` in flight). Request bodies are serialised before the clock starts
and responses are checked cheaply, so the client stays far from being the bottleneck; its own CPU
use is reported with the results.

    python -m bench.client --api_url http://127.0.0.1:8000/v1 --model text-embedding-3-small \\
        --batch_size 32 --dataset sts --encoding_format base64 --duration 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import random
import re
import select
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import aiohttp
import orjson

from bench.common import DEFAULT_EVAL_DIR, LatencyStats, batches, load_dataset

_EMBEDDING_KEY = re.compile(rb'"embedding"\s*:')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)")


class _ReplyReader:
    """HTTP/1.1 reply framing over one reused buffer: Content-Length or close-delimited replies.

    The socket is read straight into `buf` (no per-read bytes objects, no growing and trimming
    of a buffer per reply); a reply's body is copied out once.
    """

    def __init__(self) -> None:
        self.buf = bytearray(256 * 1024)
        self.start = 0  # where the reply being read begins in buf
        self.filled = 0  # bytes of buf holding data
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.header_end = -1
        self.status = 0
        self.length: int | None = None
        self.close_after = False

    def writable(self) -> memoryview:
        """Free space to read into. Call only when no earlier view of buf is alive."""
        if self.start:
            rest = self.filled - self.start
            if rest:
                self.buf[:rest] = self.buf[self.start : self.filled]
            self.start, self.filled = 0, rest
        if len(self.buf) - self.filled < 65536:
            self.buf.extend(bytes(len(self.buf)))
        return memoryview(self.buf)[self.filled :]

    def reply(self) -> tuple[int, bytes, bool] | None:
        """(status, body, server closes after it) once complete; None until then."""
        buf = self.buf
        if self.header_end < 0:
            i = buf.find(b"\r\n\r\n", self.start, self.filled)
            if i < 0:
                if self.closed:
                    raise ConnectionResetError("connection closed before a reply")
                return None
            head = bytes(buf[self.start : i]).lower()
            self.header_end = i + 4
            self.status = int(head[9:12])
            m = _CONTENT_LENGTH.search(head)
            self.length = int(m.group(1)) if m else None
            self.close_after = b"connection: close" in head or head.startswith(b"http/1.0")
            if b"transfer-encoding: chunked" in head:
                raise ValueError("chunked replies are not supported")
        if self.length is not None:
            end = self.header_end + self.length
            if self.filled < end:
                if self.closed:
                    raise ConnectionResetError("connection closed mid-reply")
                return None
        elif not self.closed:
            return None
        else:
            end = self.filled
        # The temporary view is gone before the next writable(), which may move buf.
        payload = memoryview(buf)[self.header_end : end].tobytes()
        result = (self.status, payload, self.close_after)
        self.start = end
        self._reset()
        return result


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection under asyncio: a request out, a reply in (`_ReplyReader`).

    A few lines of protocol instead of a full client library keeps the client's CPU per request
    several times lower, which matters when it shares 2 cores with the servers it measures.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = _ReplyReader()
        self.waiter: asyncio.Future | None = None

    @property
    def closed(self) -> bool:
        return self.reader.closed

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        # Called between reads, when no view of the buffer is alive.
        return self.reader.writable()

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.filled += nbytes
        self._check()

    def eof_received(self) -> bool:
        self.reader.closed = True
        self._check()
        return False

    def connection_lost(self, exc) -> None:
        self.reader.closed = True
        self._check()

    def _check(self) -> None:
        w = self.waiter
        if w is None or w.done():
            return
        try:
            result = self.reader.reply()
        except (ConnectionResetError, ValueError) as exc:
            w.set_exception(exc)
            return
        if result is not None:
            w.set_result(result)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply within the timeout"))


class RawClient:
    """Keeps one connection alive and reconnects when the server closes it."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port = host, port
        self.prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.conn: _Connection | None = None

    async def post(self, body: bytes, timeout: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        if self.conn is None or self.conn.closed:
            _, self.conn = await loop.create_connection(_Connection, self.host, self.port)
        conn = self.conn
        conn.waiter = waiter = loop.create_future()
        conn.transport.write(self.prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
        # A timer on the future itself: cheaper than asyncio.wait_for's extra task per request.
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            status, payload, close_after = await waiter
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
        if close_after or conn.closed:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        self.conn = None


@dataclass
class Sample:
    start: float  # seconds since the run started
    latency: float
    ok: bool
    inputs: int
    tokens: int
    error: str = ""


@dataclass
class Summary:
    requests: int
    successes: int
    failures: int
    success_rate: float
    duration_s: float
    requests_per_s: float
    inputs_per_s: float
    tokens_per_s: float
    latency_ms: LatencyStats
    client_cpu_s: float
    client_cpu_percent_of_one_core: float
    errors: dict[str, int] = field(default_factory=dict)


def check_response(
    status: int, body: bytes, n_inputs: int, encoding_format: str, validate: str
) -> tuple[bool, int, str]:
    """(ok, prompt_tokens, error). `light` counts embeddings with a regex; `full` parses all."""
    if status != 200:
        return False, 0, f"HTTP {status}"
    if validate == "full":
        try:
            doc = orjson.loads(body)
            data = doc["data"]
            if len(data) != n_inputs:
                return False, 0, f"{len(data)} embeddings for {n_inputs} inputs"
            dims = set()
            for i, item in enumerate(data):
                if item["index"] != i:
                    return False, 0, "embeddings out of order"
                emb = item["embedding"]
                if encoding_format == "base64":
                    raw = base64.b64decode(emb)
                    if len(raw) % 4:
                        return False, 0, "base64 embedding is not float32"
                    dims.add(len(raw) // 4)
                else:
                    dims.add(len(emb))
            if len(dims) != 1 or 0 in dims:
                return False, 0, f"inconsistent dimensions {sorted(dims)}"
            return True, int(doc["usage"]["prompt_tokens"]), ""
        except (ValueError, KeyError, TypeError) as e:
            return False, 0, f"bad body: {type(e).__name__}"
    found = body.count(b'"embedding":')
    if found != n_inputs:  # a server that writes spaces around its colons
        found = len(_EMBEDDING_KEY.findall(body))
    if found != n_inputs:
        return False, 0, f"{found} embeddings for {n_inputs} inputs"
    m = _PROMPT_TOKENS.search(body, max(0, len(body) - 200))
    if m is None:
        m = _PROMPT_TOKENS.search(body)
    return True, int(m.group(1)) if m else 0, ""


def build_bodies(
    texts: Sequence[str], model: str, batch_size: int, encoding_format: str, count: int | None
) -> list[tuple[bytes, int]]:
    out = []
    for batch in batches(texts, batch_size, count):
        payload: dict = {"model": model, "input": batch if batch_size > 1 else batch[0]}
        payload["encoding_format"] = encoding_format
        out.append((orjson.dumps(payload), len(batch)))
    return out


class AiohttpClient:
    """The same interface over an aiohttp session (a full client library, for comparison)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def post(self, body: bytes, timeout: float) -> tuple[int, bytes]:
        async with self.session.post(
            self.url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            return resp.status, await resp.read()

    def close(self) -> None:
        pass


async def run_load(
    url: str,
    bodies: Sequence[tuple[bytes, int]],
    *,
    encoding_format: str = "float",
    concurrency: int = 8,
    request_rate: float = math.inf,
    duration: float | None = 10.0,
    num_requests: int | None = None,
    validate: str = "light",
    timeout: float = 60.0,
    progress: bool = False,
    seed: int = 0,
    transport: str = "raw",
) -> tuple[list[Sample], float]:
    """Drive `url` with `bodies` (cycled); returns the samples and the wall time of the run."""
    if duration is None and num_requests is None:
        raise ValueError("give a duration or a number of requests")
    samples: list[Sample] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_requests, unit="req", file=sys.stderr, mininterval=0.5, leave=False)

    parts = urlsplit(url)
    session = None
    if transport == "aiohttp":
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        clients = [AiohttpClient(session, url) for _ in range(concurrency)]
    else:
        clients = [
            RawClient(parts.hostname, parts.port or 80, parts.path) for _ in range(concurrency)
        ]
    pool: asyncio.Queue = asyncio.Queue()
    for c in clients:
        pool.put_nowait(c)
    counter = iter(range(sys.maxsize))
    t0 = time.perf_counter()
    deadline = t0 + duration if duration is not None else math.inf

    def next_index() -> int | None:
        i = next(counter)
        if num_requests is not None and i >= num_requests:
            return None
        if time.perf_counter() >= deadline:
            return None
        return i

    async def one(i: int) -> None:
        body, n = bodies[i % len(bodies)]
        client = await pool.get()
        start = time.perf_counter()
        try:
            status, payload = await client.post(body, timeout)
            ok, tokens, err = check_response(status, payload, n, encoding_format, validate)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            ok, tokens, err = False, 0, f"{type(e).__name__}: {e}"[:120]
        finally:
            pool.put_nowait(client)
        end = time.perf_counter()
        samples.append(Sample(start - t0, end - start, ok, n if ok else 0, tokens, err))
        if bar is not None:
            bar.update(1)

    try:
        if math.isinf(request_rate):

            async def worker() -> None:
                while (i := next_index()) is not None:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng = random.Random(seed)
            tasks = []
            next_at = time.perf_counter()
            while (i := next_index()) is not None:
                next_at += rng.expovariate(request_rate)
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if time.perf_counter() >= deadline:
                        break
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    finally:
        for c in clients:
            c.close()
        if session is not None:
            await session.close()
        if bar is not None:
            bar.close()
    return samples, wall


def run_closed_loop(
    url: str,
    bodies: Sequence[tuple[bytes, int]],
    *,
    encoding_format: str = "float",
    concurrency: int = 8,
    duration: float | None = 10.0,
    num_requests: int | None = None,
    validate: str = "light",
    timeout: float = 60.0,
    progress: bool = False,
) -> tuple[list[Sample], float]:
    """`run_load`'s closed loop without asyncio: `concurrency` keep-alive connections, each
    sending its next request as soon as its reply is in, driven by one epoll loop. About half
    the client CPU per request of the asyncio transport, so more of the machine is left to the
    server under test."""
    if duration is None and num_requests is None:
        raise ValueError("give a duration or a number of requests")
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    prefix = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_requests, unit="req", file=sys.stderr, mininterval=0.5, leave=False)
    poller = select.epoll()
    samples: list[Sample] = []
    counter = iter(range(sys.maxsize))
    t0 = time.perf_counter()
    deadline = t0 + duration if duration is not None else math.inf
    # Per connection: [socket or None, reader, inputs, start time]
    slots: dict[int, list] = {}
    idle: list[list] = [[None, None, 0, 0.0] for _ in range(concurrency)]

    def record(slot: list, ok: bool, tokens: int, err: str) -> None:
        end = time.perf_counter()
        n = slot[2]
        samples.append(Sample(slot[3] - t0, end - slot[3], ok, n if ok else 0, tokens, err))
        if bar is not None:
            bar.update(1)

    def drop(slot: list) -> None:
        sock = slot[0]
        if sock is not None:
            slots.pop(sock.fileno(), None)
            poller.unregister(sock)
            sock.close()
        slot[0] = slot[1] = None

    def send_next(slot: list) -> None:
        while True:
            i = next(counter)
            if (num_requests is not None and i >= num_requests) or time.perf_counter() >= deadline:
                drop(slot)
                return
            body, n = bodies[i % len(bodies)]
            slot[2], slot[3] = n, time.perf_counter()
            try:
                if slot[0] is None:
                    sock = socket.create_connection((host, port), timeout=timeout)
                    sock.settimeout(None)  # reads happen only when epoll says data is there
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    slot[0], slot[1] = sock, _ReplyReader()
                    slots[sock.fileno()] = slot
                    poller.register(sock, select.EPOLLIN)
                slot[0].sendall(prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
                return
            except OSError as e:
                record(slot, False, 0, f"{type(e).__name__}: {e}"[:120])
                drop(slot)

    try:
        for slot in idle:
            send_next(slot)
        while slots:
            now = time.perf_counter()
            first_due = min(slot[3] for slot in slots.values()) + timeout
            events = poller.poll(max(0.0, first_due - now))
            for fd, _ in events:
                slot = slots.get(fd)
                if slot is None:
                    continue
                reader: _ReplyReader = slot[1]
                try:
                    got = slot[0].recv_into(reader.writable(), 0, socket.MSG_DONTWAIT)
                    if got:
                        reader.filled += got
                    else:
                        reader.closed = True
                    result = reader.reply()
                except BlockingIOError:  # an event for an earlier socket of the same number
                    continue
                except (OSError, ValueError) as e:
                    record(slot, False, 0, f"{type(e).__name__}: {e}"[:120])
                    drop(slot)
                    send_next(slot)
                    continue
                if result is None:
                    continue
                status, payload, close_after = result
                ok, tokens, err = check_response(
                    status, payload, slot[2], encoding_format, validate
                )
                record(slot, ok, tokens, err)
                if close_after or reader.closed:
                    drop(slot)
                send_next(slot)
            now = time.perf_counter()
            for slot in [s for s in slots.values() if now - s[3] >= timeout]:
                record(slot, False, 0, "TimeoutError: no reply within the timeout")
                drop(slot)
                send_next(slot)
        wall = time.perf_counter() - t0
    finally:
        for slot in list(slots.values()):
            drop(slot)
        poller.close()
        if bar is not None:
            bar.close()
    return samples, wall


def summarise(samples: Sequence[Sample], wall: float, cpu_s: float) -> Summary:
    good = [s for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            errors[s.error] = errors.get(s.error, 0) + 1
    wall = max(wall, 1e-9)
    return Summary(
        requests=len(samples),
        successes=len(good),
        failures=len(samples) - len(good),
        success_rate=len(good) / len(samples) if samples else 0.0,
        duration_s=wall,
        requests_per_s=len(good) / wall,
        inputs_per_s=sum(s.inputs for s in good) / wall,
        tokens_per_s=sum(s.tokens for s in good) / wall,
        latency_ms=LatencyStats.of([s.latency * 1000 for s in good]),
        client_cpu_s=cpu_s,
        client_cpu_percent_of_one_core=100.0 * cpu_s / wall,
        errors=errors,
    )


def benchmark(url: str, bodies, **kwargs) -> tuple[Summary, list[Sample]]:
    """Run a load and measure this process's CPU time around it. transport "auto" (default):
    the epoll loop for a closed loop, asyncio ("raw") for an open one."""
    transport = kwargs.pop("transport", "auto")
    closed = math.isinf(kwargs.get("request_rate", math.inf))
    if transport == "epoll" and not closed:
        raise ValueError("the epoll transport runs closed loops only (--request_rate inf)")
    cpu0 = time.process_time()
    if transport in ("auto", "epoll") and closed:
        kwargs.pop("request_rate", None)
        kwargs.pop("seed", None)
        samples, wall = run_closed_loop(url, bodies, **kwargs)
    else:
        kwargs["transport"] = "raw" if transport == "auto" else transport
        samples, wall = asyncio.run(run_load(url, bodies, **kwargs))
    return summarise(samples, wall, time.process_time() - cpu0), samples


def format_summary(s: Summary) -> str:
    lat = s.latency_ms
    lines = [
        f"requests        {s.requests} ({s.failures} failed, success rate {s.success_rate:.1%})",
        f"duration        {s.duration_s:.2f} s",
        f"requests/s      {s.requests_per_s:.1f}",
        f"inputs/s        {s.inputs_per_s:.1f}",
        f"tokens/s        {s.tokens_per_s:.0f}",
        f"latency ms      mean {lat.mean:.2f}  p50 {lat.p50:.2f}  p90 {lat.p90:.2f}  "
        f"p99 {lat.p99:.2f}  max {lat.max:.2f}",
        f"client CPU      {s.client_cpu_s:.2f} s = {s.client_cpu_percent_of_one_core:.0f} % "
        "of one core",
    ]
    lines += [f"error           {n} x {msg}" for msg, n in s.errors.items()]
    return "\n".join(lines)


def plot(samples: Sequence[Sample], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [s for s in samples if s.ok]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.hist([s.latency * 1000 for s in good], bins=50)
    ax1.set_xlabel("latency (ms)")
    ax1.set_ylabel("requests")
    ax1.set_title("latency")
    end = max((s.start + s.latency for s in good), default=0.0)
    n_bins = max(1, math.ceil(end))
    per_second = [0] * n_bins
    for s in good:
        per_second[min(int(s.start + s.latency), n_bins - 1)] += 1
    ax2.plot(range(n_bins), per_second, drawstyle="steps-post")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("requests completed per second")
    ax2.set_title("throughput")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_rate(value: str) -> float:
    rate = math.inf if value.lower() == "inf" else float(value)
    if rate <= 0:
        raise argparse.ArgumentTypeError("request rate must be > 0 or inf")
    return rate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--api_url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="text-embedding-3-small")
    p.add_argument("--batch_size", type=int, default=32, help="inputs per request")
    p.add_argument(
        "--request_rate",
        type=parse_rate,
        default=math.inf,
        help="requests/s as Poisson arrivals, or inf for a closed loop",
    )
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    p.add_argument("--dataset", default="sts", help="sts, synthetic, or a text file (one/line)")
    p.add_argument("--synthetic_length", type=int, default=64, help="words per synthetic text")
    p.add_argument("--eval-dir", "--eval_dir", default=str(DEFAULT_EVAL_DIR))
    p.add_argument("--encoding_format", choices=["float", "base64"], default="float")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, default=None, help="seconds (default 20)")
    stop.add_argument("--num_requests", type=int, default=None)
    p.add_argument(
        "--validate",
        choices=["light", "full"],
        default="light",
        help="light: status + embedding count; full: parse every vector",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--transport",
        choices=["auto", "epoll", "raw", "aiohttp"],
        default="auto",
        help="epoll: one epoll loop, closed loop only (lowest client CPU); raw: minimal asyncio "
        "HTTP/1.1; aiohttp: the library; auto: epoll for a closed loop, else raw",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--plot", default=None, help="write latency/throughput plots to this PNG")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.concurrency < 1:
        raise SystemExit("--batch_size and --concurrency must be >= 1")
    if args.duration is None and args.num_requests is None:
        args.duration = 20.0
    texts = load_dataset(args.dataset, args.eval_dir, args.synthetic_length)
    bodies = build_bodies(texts, args.model, args.batch_size, args.encoding_format, None)
    url = args.api_url.rstrip("/") + "/embeddings"
    summary, samples = benchmark(
        url,
        bodies,
        encoding_format=args.encoding_format,
        concurrency=args.concurrency,
        request_rate=args.request_rate,
        duration=args.duration,
        num_requests=args.num_requests,
        validate=args.validate,
        timeout=args.timeout,
        progress=not args.no_progress,
        seed=args.seed,
        transport=args.transport,
    )
    if args.json:
        doc = asdict(summary)
        doc["config"] = {k: v for k, v in vars(args).items() if k not in {"json", "no_progress"}}
        if math.isinf(args.request_rate):
            doc["config"]["request_rate"] = "inf"
        print(json.dumps(doc, indent=2))
    else:
        print(format_summary(summary))
    if args.plot:
        plot(samples, args.plot, f"{args.model} batch {args.batch_size} {args.encoding_format}")
    return 0 if summary.successes else 1


if __name__ == "__main__":
    raise SystemExit(main())
