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
- socket reads and writes time out after IO_TIMEOUT, so a client that stalls mid-request is
  dropped instead of holding the worker (gthread with one thread would wait for it forever);
- a worker that already holds connections waits a little before accepting another one, longer
  the more it holds, so that an idle worker takes it first. Kept-alive connections stay with the
  worker that accepted them, and a burst of them (a client opening its pool) would otherwise
  often land on one worker and leave another idle.
- the arbiter's heartbeat file is touched at most every HEARTBEAT seconds, not on every request.

gunicorn.conf.py uses it when ZEROTH_THREADS is 1 (the default) and gthread otherwise.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections import deque
from concurrent.futures import Future
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

# A request's bytes must keep coming (and the response's be taken) at least this often.
IO_TIMEOUT = float(os.environ.get("ZEROTH_IO_TIMEOUT", "10"))
# Accept delay per connection already held, and its cap: short next to a kept-alive
# connection's life, long next to the time an idle worker needs to wake up and accept, even on
# a busy machine. Clients that open a connection per request never see it (nothing is held).
ACCEPT_DELAY_PER_CONN = 0.002
ACCEPT_DELAY_MAX = 0.01
HEARTBEAT = 1.0


class _Conn(TConn):
    def init(self) -> None:
        # `handle` makes the socket blocking, then calls init: bound the blocking here.
        super().init()
        self.sock.settimeout(IO_TIMEOUT)


class InlineWorker(ThreadWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._accept_at: float | None = None  # when a deferred accept may happen
        self._accept_now = False  # the deferral is over: accept on this poll, if anyone waits
        self._notified = 0.0
        self._serving = False
        self._pipelined: deque[TConn] = deque()

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
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
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
                    done.set_result(self.handle(conn))
                except BaseException as exc:  # finish_request closes the connection then
                    done.set_exception(exc)
                self.finish_request(conn, done)
                if not self._pipelined:
                    return
                conn = self._pipelined.popleft()
        finally:
            self._serving = False
