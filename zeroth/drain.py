"""Draining: between SIGTERM and gunicorn's graceful stop, keep serving but say "not ready".

A replica that goes away should first be taken out of rotation, then stop. In Kubernetes the
endpoint removal and the `preStop` sleep do the first part before SIGTERM arrives. Anything
else that routes on readiness (a load balancer's health check, compose, a script) only learns
from `/ready`, so with ZEROTH_DRAIN_SECONDS > 0 the gunicorn master, on SIGTERM:

1. sets the shared flag below: `/ready` answers 503 `{"status": "draining"}` and every
   response says `Connection: close`, so kept-alive clients reconnect (to another replica,
   behind a balancer) instead of holding on to this one;
2. keeps serving for ZEROTH_DRAIN_SECONDS (a second SIGTERM ends the wait at once);
3. then stops as gunicorn does: the listener closes (new connections are refused, which is what
   makes a passive balancer such as open-source nginx try another replica) and the workers
   finish their requests within ZEROTH_GRACEFUL_TIMEOUT.

The flag is one byte of anonymous shared memory, mapped when this module is first imported:
gunicorn.conf.py imports it in the master, so every worker forked later sees the same byte.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Callable

_FLAG = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: survives fork as one page


def draining() -> bool:
    """True once this server (master and every worker) has begun to drain."""
    return _FLAG[0] == 1


def begin() -> None:
    _FLAG[0] = 1


def reset() -> None:
    """For tests: the process serves normally again."""
    _FLAG[0] = 0


def install(arbiter, seconds: float) -> None:
    """Make the gunicorn master drain for `seconds` on SIGTERM before its graceful stop.

    `arbiter` is gunicorn's Arbiter (the `server` of the when_ready hook). Its main loop looks
    handlers up by name on the instance, so an instance attribute replaces `handle_term`.
    """
    if seconds <= 0:
        return
    stop: Callable[[], None] = arbiter.handle_term  # raises StopIteration: the graceful stop
    deadline: list[float] = []

    def handle_term() -> None:
        if deadline:  # a second SIGTERM: stop now
            stop()
        begin()
        deadline.append(time.monotonic() + seconds)
        arbiter.log.info(
            "SIGTERM: draining for %.1f s (/ready answers 503), then stopping", seconds
        )
        # The master's loop wakes on a signal or every second; this wakes it on time.
        timer = threading.Timer(seconds, arbiter.wakeup)
        timer.daemon = True
        timer.start()

    murder_workers = arbiter.murder_workers

    def murder_workers_then_maybe_stop() -> None:
        # Runs on every turn of the master's loop, inside the try that turns StopIteration
        # into gunicorn's graceful halt.
        murder_workers()
        if deadline and time.monotonic() >= deadline[0]:
            stop()

    arbiter.handle_term = handle_term
    arbiter.murder_workers = murder_workers_then_maybe_stop
