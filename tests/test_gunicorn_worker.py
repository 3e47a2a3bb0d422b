"""zeroth/gunicorn_worker.py under a real gunicorn: keep-alive, pipelining, stalled clients and
how connections spread over the workers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import write_models_list
from zeroth.launch import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PORTS = range(18700, 18800)
IO_TIMEOUT = 1.5


def _request(text: str) -> bytes:
    body = orjson.dumps({"model": "tiny", "input": text})
    return (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length; extra bytes stay in `buf`."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v)
        for k, _, v in (x.partition(b":") for x in lines[1:])
        if k.lower() == b"content-length"
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    buf[:] = rest[length:]
    return status, rest[:length]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def worker_of(self, sock: socket.socket) -> int:
        """The pid of the worker holding the other end of `sock`."""
        local = sock.getsockname()[1]
        for worker in self.workers():
            for c in worker.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == local and c.laddr.port == self.port:
                    return worker.pid
        raise LookupError("no worker holds this connection")


def _start(tmp_path: Path, tiny_ckpt: Path, workers: int, **extra_env: str) -> Server:
    models = write_models_list(
        tmp_path / "models_list.yaml", {"models": {"tiny": {"path": str(tiny_ckpt)}}}
    )
    port = free_port(PORTS)
    log = tmp_path / f"gunicorn-{port}.log"
    env = {
        **os.environ,
        "ZEROTH_BIND": f"127.0.0.1:{port}",
        "ZEROTH_WORKERS": str(workers),
        "ZEROTH_IO_TIMEOUT": str(IO_TIMEOUT),
        "ZEROTH_REQUEST_LOG": "0",
        "MODELS_LIST": str(models),
        "ZEROTH_MAX_BODY_BYTES": "4096",
        **extra_env,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "server:app"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with server.connect() as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
                if _read_response(s, bytearray())[0] == 200 and len(server.workers()) == workers:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server not ready within 60 s:\n{log.read_text()}")
        time.sleep(0.1)


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
def one_worker(tmp_path: Path, tiny_ckpt: Path) -> Iterator[Server]:
    server = _start(tmp_path, tiny_ckpt, 1)
    yield server
    _stop(server)


@pytest.fixture
def two_workers(tmp_path: Path, tiny_ckpt: Path) -> Iterator[Server]:
    server = _start(tmp_path, tiny_ckpt, 2)
    yield server
    _stop(server)


def test_the_inline_worker_is_the_default(one_worker: Server) -> None:
    assert "Using worker: zeroth.gunicorn_worker.InlineWorker" in one_worker.log.read_text()


def test_keep_alive_and_pipelined_requests(one_worker: Server) -> None:
    texts = [f"the {w} cat" for w in ("quick", "lazy", "red", "old")] * 150
    with one_worker.connect() as sock:
        # Far more requests in one write than the worker could serve by recursing per request.
        sock.sendall(b"".join(_request(t) for t in texts))
        buf = bytearray()
        answers = [_read_response(sock, buf) for _ in texts]
        # The connection is still open for more.
        sock.sendall(_request("hello world"))
        last = _read_response(sock, buf)
    assert [status for status, _ in answers] == [200] * len(texts)
    vectors = [orjson.loads(body)["data"][0]["embedding"] for _, body in answers]
    # Same text, same vector; different texts, different vectors: answers stayed in order.
    assert vectors[0] == vectors[4] == vectors[-4]
    assert vectors[0] != vectors[1]
    assert last[0] == 200


def test_a_stalled_client_is_dropped_and_the_worker_serves_on(one_worker: Server) -> None:
    with one_worker.connect() as stalled:
        stalled.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)  # the worker is now reading the rest of that body
        start = time.monotonic()
        with one_worker.connect() as sock:
            sock.sendall(_request("the cat sat"))
            status, _ = _read_response(sock, bytearray())
        waited = time.monotonic() - start
        stalled.settimeout(5)
        assert stalled.recv(65536) == b""  # dropped, unanswered
    assert status == 200
    assert IO_TIMEOUT * 0.5 < waited < IO_TIMEOUT + 2


def test_connections_spread_over_the_workers(two_workers: Server) -> None:
    socks = []
    try:
        for _ in range(4):
            sock = two_workers.connect()
            sock.sendall(_request("the dog ran"))
            assert _read_response(sock, bytearray())[0] == 200
            socks.append(sock)
        held = [two_workers.worker_of(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert sorted(held.count(pid) for pid in set(held)) == [2, 2]


@pytest.fixture
def bare_worker() -> Iterator[tuple]:
    """An InlineWorker with a poller and one listener, not forked and not running."""
    import logging
    import selectors

    from gunicorn.config import Config

    from zeroth.gunicorn_worker import InlineWorker

    listener = socket.create_server(("127.0.0.1", 0))
    worker = InlineWorker(0, os.getpid(), [listener], None, 30, Config(), logging.getLogger())
    worker.poller = selectors.DefaultSelector()
    worker.set_accept_enabled(True)
    try:
        yield worker, listener
    finally:
        worker.poller.close()
        worker.tmp.close()
        listener.close()


def test_a_worker_holding_connections_lets_others_accept_first(bare_worker) -> None:
    from zeroth.gunicorn_worker import ACCEPT_DELAY_PER_CONN

    worker, listener = bare_worker
    port = listener.getsockname()[1]
    with (
        socket.create_connection(("127.0.0.1", port)),
        socket.create_connection(("127.0.0.1", port)),
    ):
        worker.accept(listener)  # holding nothing: accepts at once
        assert worker.nr_conns == 1 and len(worker.pending_conns) == 1

        start = time.monotonic()
        worker.accept(listener)  # holding one: steps back
        assert worker.nr_conns == 1 and not worker._accepting
        worker.set_accept_enabled(True)  # what the run loop does on its next turn: too early
        assert not worker._accepting

        while time.monotonic() < start + ACCEPT_DELAY_PER_CONN:
            time.sleep(ACCEPT_DELAY_PER_CONN / 10)
        worker.set_accept_enabled(True)
        assert worker._accepting
        worker.accept(listener)  # its turn has come: accepts even though it holds one
        assert worker.nr_conns == 2

        # The next arrival is deferred again, longer: two held.
        worker.wait_for_and_dispatch_events(0)
        worker.accept(listener)
        assert worker.nr_conns == 2 and not worker._accepting
        assert worker._accept_at - time.monotonic() > ACCEPT_DELAY_PER_CONN
    for conn in worker.pending_conns:
        conn.close()


def _raw(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: t"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _json_body(obj: object) -> bytes:
    return orjson.dumps(obj)


_OK = _json_body({"model": "tiny", "input": ["the cat", "a dog"]})
_CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_OK), _OK)
# Requests the lean route answers, and ones it must leave to gunicorn, in one list: the
# answers must not depend on which one took them.
CASES = {
    "post": _raw(
        "POST", "/v1/embeddings", _OK, Content_Type="application/json", Content_Length=str(len(_OK))
    ),
    "post-close": _raw(
        "POST", "/v1/embeddings", _OK, Content_Length=str(len(_OK)), Connection="close"
    ),
    "bad-json": _raw("POST", "/v1/embeddings", b"{nope", Content_Length="5"),
    "unknown-model": _raw(
        "POST", "/v1/embeddings", b'{"model":"x","input":"a"}', Content_Length="25"
    ),
    "too-large": _raw("POST", "/v1/embeddings", b"x" * 5000, Content_Length="5000"),
    "wrong-type": _raw(
        "POST", "/v1/embeddings", _OK, Content_Type="text/plain", Content_Length=str(len(_OK))
    ),
    "ready": _raw("GET", "/ready"),
    "models": _raw("GET", "/v1/models"),
    "not-found": _raw("GET", "/nope"),
    "query": _raw("GET", "/v1/models?x=1"),
    "chunked": _raw("POST", "/v1/embeddings", _CHUNKED, Transfer_Encoding="chunked"),
    "expect": _raw(
        "POST", "/v1/embeddings", _OK, Content_Length=str(len(_OK)), Expect="100-continue"
    ),
    "repeated-header": _raw("GET", "/ready", X_Request_ID="a", x_request_id="b"),
    "http10": b"GET /ready HTTP/1.0\r\n\r\n",
    "no-length-post": _raw("POST", "/v1/embeddings"),
}
_VARIES = (b"date:", b"x-request-id:")


def _answers(server: Server, requests: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(head without the lines that vary, body) per request, all pipelined on one connection
    (a request gunicorn must close after ends the list: it is sent alone, last)."""
    out = []
    with server.connect() as sock:
        sock.sendall(b"".join(requests))
        buf = bytearray()
        for _ in requests:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                buf += chunk
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            lines = [x for x in head.split(b"\r\n") if not x.lower().startswith(_VARIES)]
            length = 0
            for x in lines:
                if x.lower().startswith(b"content-length:"):
                    length = int(x.split(b":")[1])
            while len(rest) < length:
                rest += sock.recv(65536)
            buf[:] = rest[length:]
            out.append((b"\r\n".join(lines), rest[:length]))
    return out


def test_the_lean_route_answers_exactly_as_gunicorn(tmp_path: Path, tiny_ckpt: Path) -> None:
    lean = _start(tmp_path, tiny_ckpt, 1)
    plain = _start(tmp_path, tiny_ckpt, 1, ZEROTH_LEAN_HTTP="0")
    try:
        for name, request in CASES.items():
            # Alone on a connection, then behind a lean-route request and before another one.
            for requests in ([request], [CASES["post"], request, CASES["ready"]]):
                got, want = _answers(lean, requests), _answers(plain, requests)
                assert got == want, name
                assert len(want) >= 1, name
    finally:
        _stop(lean)
        _stop(plain)
    # Both routes were taken: most requests on the lean one, the rest by gunicorn's parser.
    served = re.search(r"(\d+) requests, (\d+) on the lean route \(on\)", lean.log.read_text())
    assert served, lean.log.read_text()
    total, on_lean = map(int, served.groups())
    assert 0 < on_lean < total
    assert re.search(r"\d+ requests, 0 on the lean route \(off\)", plain.log.read_text())


@pytest.fixture(scope="module")
def lean_and_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    from tests.conftest import write_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("lean-fuzz")
    ckpt = write_tiny_checkpoint(tmp / "tiny")
    lean = _start(tmp, ckpt, 1)
    plain = _start(tmp, ckpt, 1, ZEROTH_LEAN_HTTP="0")
    yield lean, plain
    _stop(lean)
    _stop(plain)


def _one_answer(server: Server, request: bytes) -> bytes:
    """The first response to `request` on a fresh connection (Date and X-Request-ID lines
    aside), or whatever came before the server closed or went quiet."""
    out = bytearray()
    with server.connect() as sock:
        sock.settimeout(2)
        sock.sendall(request)
        try:
            while b"\r\n\r\n" not in out and (chunk := sock.recv(65536)):
                out += chunk
            head, _, body = bytes(out).partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            while length and len(body) < int(length.group(1)) and (chunk := sock.recv(65536)):
                body += chunk
            out[:] = head + b"\r\n\r\n" + body if body or length else out
        except (TimeoutError, ConnectionError):
            pass
    lines = [x for x in bytes(out).split(b"\r\n") if not x.lower().startswith(_VARIES)]
    # Werkzeug lists the allowed methods from a set: their order is the process's hash seed's.
    lines = [
        b"Allow: " + b", ".join(sorted(x[6:].strip().split(b", ")))
        if x.lower().startswith(b"allow:")
        else x
        for x in lines
    ]
    return b"\r\n".join(lines)


_NAMES = st.sampled_from(
    ["Host", "Content-Type", "content-length", "Connection", "X-Request-ID", "Authorization",
     "Transfer-Encoding", "Expect", "X-Forwarded-For", "X_Under", "Accept", "User-Agent"]
)  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from(["application/json", "close", "keep-alive", "chunked", "100-continue", "x"]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=12),
)


@st.composite
def _requests(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "post", "GET "]))
    path = draw(
        st.one_of(
            st.sampled_from(["/v1/embeddings", "/ready", "/v1/models", "/nope", "/v1/models/tiny"]),
            st.text(alphabet="/abc%?=.-_~ ", min_size=1, max_size=12).map(lambda p: "/" + p),
        )
    )
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2"]))
    body = draw(st.sampled_from([b"", _OK, b'{"model":"tiny","input":""}', b"{", b'{"input":"a"}']))
    headers = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=5))
    head = [f"{method} {path} {version}"]
    has_length = False
    for name, value in headers:
        if name.lower() in ("content-length", "transfer-encoding"):
            continue  # framing is drawn below, so that no request leaves the server waiting
        head.append(f"{name}: {value}")
    if draw(st.booleans()) or method == "POST":
        head.append(f"Content-Length: {len(body)}")
        has_length = True
    if draw(st.booleans()):
        head.append(f"Content-Length: {len(body)}")  # repeated
        has_length = True
    raw = "\r\n".join(head).encode("latin-1") + b"\r\n\r\n"
    return raw + (body if has_length else b"")


@given(_requests())
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_request_gets_the_same_answer_on_both_routes(lean_and_plain, request_bytes) -> None:
    lean, plain = lean_and_plain
    assert _one_answer(lean, request_bytes) == _one_answer(plain, request_bytes), request_bytes
