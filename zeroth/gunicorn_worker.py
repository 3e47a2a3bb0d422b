"""A gunicorn worker that answers each request in its main loop: gthread without the hand-off.

gunicorn's gthread worker polls its sockets in the main thread and passes every readable
connection to a thread pool, which passes it back through a pipe when the request is done. With
one handler thread per worker (ours: the work is CPU-bound Python, so more threads only trade
the GIL) the pool buys nothing and costs ~0.13 ms of CPU a request (a future, locks, a pipe write
and read, an epoll unregister and register, two threads taking turns). This worker runs
gthread's own `handle` inline instead; parsing, keep-alive, limits, graceful shutdown and hooks
are gthread's. What differs:

- a new connection is read once it is readable (gthread's thread waits up to 5 s for its first
  bytes, which here would stall the loop);
- socket reads and writes time out after ZEROTH_IO_TIMEOUT (SO_RCVTIMEO, SO_SNDTIMEO), so a
  client that stalls mid-request is let go (a body that stopped coming is answered as
  incomplete, then the connection closes) instead of holding the worker (gthread with one
  thread would wait for it forever);
- the common request (zeroth/lean_http.py: GET or POST, plain path, distinct headers,
  Content-Length, the head in gunicorn's own first read and the whole request within
  LEAN_MAX_BYTES) is parsed and answered without gunicorn's Python parser and response objects,
  in one write. Every other request goes to gunicorn's parser with every byte read so far
  pushed back into its unreader, which leaves gunicorn exactly where its own reads would have:
  a short body, a half-close, a client that stalls, a large body it answers without reading
  are all gunicorn's. So does every request after one gunicorn read ahead for.
  ZEROTH_LEAN_HTTP=0 turns the route off.
- a worker that already holds connections waits a little before accepting another one, longer
  the more it holds, so that an idle worker takes it first. Kept-alive connections stay with the
  worker that accepted them, and a burst of them (a client opening its pool) would otherwise
  often land on one worker and leave another idle.
- the arbiter's heartbeat file is touched at most every HEARTBEAT seconds, not on every request.
- while the server drains (zeroth/drain.py) every response closes its connection; once the
  worker stops, it takes the connections already waiting to be accepted and closes its copy of
  the listener at once, so that later connections are refused (a balancer tries another
  replica) instead of queueing behind a listener nobody accepts on, to be reset at exit.

gunicorn.conf.py uses it when ZEROTH_THREADS is 1 (the default) and gthread otherwise.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import struct
import time
from collections import deque
from concurrent.futures import Future
from functools import partial

from gunicorn.http.message import MAX_REQUEST_LINE, Request
from gunicorn.http.unreader import IterUnreader, SocketUnreader
from gunicorn.http.wsgi import base_environ
from gunicorn.workers.gthread import TConn, ThreadWorker

from zeroth.drain import draining
from zeroth.lean_http import HttpDate, LeanRequest, Limits, Responder, parse_head, wsgi_environ
from zeroth.settings import Settings

# A request's bytes must keep coming (and the response's be taken) at least this often.
# Accept delay per connection already held, and its cap: short next to a kept-alive
# connection's life, long next to the time an idle worker needs to wake up and accept, even on
# a busy machine. Clients that open a connection per request never see it (nothing is held).
ACCEPT_DELAY_PER_CONN = 0.002
ACCEPT_DELAY_MAX = 0.01
HEARTBEAT = 1.0
# The lean route takes a request only if all of it (head and body) is at most this long, the
# amount gunicorn drains after an answer given without reading the body: a larger body is
# gunicorn's to read, or to refuse unread.
LEAN_MAX_BYTES = 64 * 1024
# How long the lean route waits for the rest of a body that did not come with the head (clients
# that write the head and the body separately); after that the request is gunicorn's, which
# waits up to ZEROTH_IO_TIMEOUT for it and answers as it does for any slow client.
LEAN_BODY_WAIT = 0.1
# What the lean route returns when the request is gunicorn's to answer.
_GUNICORN = object()


def _io_timeouts(sock: socket.socket, timeout: float) -> None:
    # Kernel timeouts, not Python's settimeout: with those, every recv and send would first
    # poll(). A timed-out call fails with EAGAIN, which ends the connection.
    seconds = int(timeout)
    timeval = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _parser_limits(cfg) -> tuple[int, int, int, int]:
    """(request line, fields, field size, first read): gunicorn's limits as its parser applies
    them (it clamps and defaults the settings), read off a request it parsed, and the size of
    its first read of a connection."""
    req = Request(cfg, IterUnreader([b"GET / HTTP/1.1\r\n\r\n"]), ("127.0.0.1", 0))
    return (
        req.limit_request_line or MAX_REQUEST_LINE,  # 0: unlimited
        req.limit_request_fields,
        req.limit_request_field_size,
        SocketUnreader(None).mxchunk,
    )


def _lean_allowed(cfg) -> bool:
    """The lean route answers as gunicorn would only where gunicorn adds nothing of its own."""
    return (
        not cfg.is_ssl
        and list(cfg.http_protocols) == ["h1"]
        and cfg.proxy_protocol in ("off", False, None)
        and not cfg.accesslog
        and cfg.settings["pre_request"].value is cfg.settings["pre_request"].default
        and cfg.settings["post_request"].value is cfg.settings["post_request"].default
        # gunicorn reads SCRIPT_NAME from the environment itself and builds it into environs.
        and not os.environ.get("SCRIPT_NAME")
    )


class InlineWorker(ThreadWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._accept_at: float | None = None  # when a deferred accept may happen
        self._accept_now = False  # the deferral is over: accept on this poll, if anyone waits
        self._notified = 0.0
        self._serving = False
        self._pipelined: deque[TConn] = deque()
        cfg = self.cfg
        self._lean = _lean_allowed(cfg)
        self._first_read = 0
        if self._lean:
            try:
                request_line, fields, field_size, self._first_read = _parser_limits(cfg)
            except Exception as exc:  # a gunicorn that no longer looks as this route expects
                self.log.warning("lean HTTP route off: gunicorn's parser limits unknown (%r)", exc)
                self._lean = False
        if self._lean:
            self._limits = Limits(
                request_line=request_line,
                fields=fields,
                field_size=field_size,
                body=LEAN_MAX_BYTES,
                gunicorn_headers=frozenset(
                    h.lower().encode()
                    for h in (*cfg.secure_scheme_headers, *cfg.forwarder_headers, "forwarded")
                ),
            )
        self._base_environ = base_environ(cfg)
        self._date = HttpDate()
        self.lean_served = 0  # requests the lean route answered (logged when the worker stops)
        self._io_timeout = Settings().io_timeout

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # The worker's own settings are the app's (zeroth.settings, read once by server.py):
        # known only once the app is loaded, before the first connection is accepted.
        state = getattr(self.wsgi, "extensions", {}).get("zeroth")
        settings = state.settings if state is not None else Settings()
        self._io_timeout = settings.io_timeout
        if not settings.lean_http:
            self._lean = False

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.log.info(
                "worker %s: %d requests, %d on the lean route (%s)",
                self.pid,
                self.nr,
                self.lean_served,
                "on" if self._lean else "off",
            )

    def notify(self) -> None:
        now = time.monotonic()
        if now - self._notified >= HEARTBEAT:
            self._notified = now
            super().notify()

    def set_accept_enabled(self, enabled: bool) -> None:
        # The run loop calls this on every turn while accepting is off.
        if enabled and self._accept_at is not None:
            if time.monotonic() < self._accept_at:
                enabled = False
            else:
                self._accept_at = None
                self._accept_now = True
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:  # gthread's run loop has ended: stopping
            self._close_listeners()

    def _close_listeners(self) -> None:
        self._accept_now = True
        for listener in self.sockets:
            listener.setblocking(False)
            while True:
                held = self.nr_conns
                self.accept(listener)  # served by gthread's graceful loop, like any other
                if self.nr_conns == held:
                    break
            listener.close()

    def handle_request(self, req, conn: TConn) -> bool:
        if draining():
            req.must_close = True  # gunicorn then answers "Connection: close"
        return super().handle_request(req, conn)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._accept_at is not None:
            timeout = min(timeout, max(self._accept_at - time.monotonic(), 0.0))
        super().wait_for_and_dispatch_events(timeout)
        # Whoever was waiting has been accepted by now, here or by another worker.
        self._accept_now = False

    def accept(self, listener: socket.socket) -> None:
        if not self._accept_now and self.nr_conns > 0:
            delay = min(ACCEPT_DELAY_PER_CONN * self.nr_conns, ACCEPT_DELAY_MAX)
            self._accept_at = time.monotonic() + delay
            self.set_accept_enabled(False)  # the run loop turns it back on when due
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        _io_timeouts(client_sock, self._io_timeout)
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        # Read it when its first bytes are there, as gthread does with a connection it deferred.
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(
            client_sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )

    def enqueue_req(self, conn: TConn) -> None:
        if self._serving:
            # finish_request found the next request already read (pipelined): serve it after
            # this one returns, not by recursing once per request.
            self._pipelined.append(conn)
            return
        self._serving = True
        try:
            while True:
                done: Future = Future()
                try:
                    done.set_result(self.serve(conn))
                except Exception as exc:  # finish_request closes the connection then
                    # (SystemExit, e.g. gunicorn's SIGABRT on a worker timeout, ends the worker)
                    done.set_exception(exc)
                self.finish_request(conn, done)
                if not self._pipelined:
                    return
                conn = self._pipelined.popleft()
        finally:
            self._serving = False

    def serve(self, conn: TConn) -> object:
        """One request on `conn`: what gthread's `handle` returns (keep-alive or not)."""
        # Only on TCP: on a Unix socket gunicorn takes SERVER_NAME and SERVER_PORT from the Host
        # header and there is no REMOTE_PORT, which the lean environ does not reproduce.
        if self._lean and not conn.is_http2 and isinstance(conn.server, tuple):
            result = self._serve_lean(conn)
            if result is not _GUNICORN:
                return result
        return self.handle(conn)

    def _serve_lean(self, conn: TConn) -> object:
        if not conn.initialized:
            conn.init()  # gunicorn's parser: for finish_request, and for any hand-over
        unreader = conn.parser.unreader
        # Bytes gunicorn read ahead (or was handed) are the start of the next request: it goes
        # on from there. Otherwise the connection is at a request boundary: gunicorn's parser
        # keeps a connection alive only once the previous body has been drained.
        if unreader.buf.getbuffer().nbytes:
            return _GUNICORN
        sock = conn.sock
        sock.setblocking(True)
        try:
            # gunicorn's own first read: a request handed over from here meets its parser in
            # the state its own read would have left (it measures its header buffer per read).
            data = sock.recv(self._first_read)
        except OSError:
            return _GUNICORN  # let gunicorn meet (and report) the same error
        if not data:
            return False  # the client closed the connection
        end = data.find(b"\r\n\r\n")
        req = parse_head(data[:end], self._limits) if end >= 0 else None
        needed = end + 4 + req.content_length if req is not None else 0
        if req is not None and len(data) < needed <= LEAN_MAX_BYTES:
            data = _read_more(sock, data, needed, time.monotonic() + LEAN_BODY_WAIT)
        if req is None or len(data) < needed:
            unreader.unread(data)
            return _GUNICORN
        if len(data) > needed:
            unreader.unread(data[needed:])  # pipelined: gunicorn serves what follows
        return self._answer(conn, req, data[end + 4 : needed])

    def _answer(self, conn: TConn, req: LeanRequest, body: bytes) -> bool:
        self.nr += 1
        self.lean_served += 1
        keep_alive = not req.close and self.alive and bool(self.cfg.keepalive) and not draining()
        if self.nr >= self.max_requests:
            if self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            keep_alive = False
        elif len(self.keepalived_conns) >= self.max_keepalived:
            keep_alive = False
        responder = Responder()
        try:
            environ = wsgi_environ(
                self._base_environ, req, body, conn.server, conn.client, conn.sock
            )
            chunks = self.wsgi(environ, responder.start_response)
            try:
                data, keep_alive = responder.response(chunks, keep_alive, self._date.now())
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        except Exception:
            self.log.exception("Error handling request %s %s", req.method, req.path)
            data = (
                b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\nInternal Server Error"
            )
            keep_alive = False
        try:
            conn.sock.sendall(data)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.debug("Error writing the response: %s", exc)
            return False
        return keep_alive


def _read_more(sock: socket.socket, data: bytes, needed: int, deadline: float) -> bytes:
    """`data` and what follows it on `sock`, up to `needed` bytes in all; less if the client
    closes, fails or sends nothing more before `deadline`."""
    buf = bytearray(data)
    poller = None
    while len(buf) < needed:
        try:
            chunk = sock.recv(needed - len(buf), socket.MSG_DONTWAIT)
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLIN)
            poller.poll(remaining * 1000)
            continue
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)
