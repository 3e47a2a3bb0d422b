"""Draining on SIGTERM (zeroth/drain.py, ZEROTH_DRAIN_SECONDS): /ready turns 503 while requests
are still served, kept-alive connections are closed after their next answer, then the listener
closes (connections refused, not queued) before the workers finish and the master exits 0."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import write_models_list
from zeroth import drain
from zeroth.launch import refuses_connections, status_of


@pytest.fixture
def draining():
    drain.begin()
    yield
    drain.reset()


def test_ready_answers_503_while_draining(client, draining):
    resp = client.get("/ready")
    assert resp.status_code == 503
    assert resp.get_json() == {"status": "draining"}
    # Still serving: draining turns new work away from this replica, it does not refuse it.
    assert client.post("/v1/embeddings", json={"input": "the cat"}).status_code == 200


def test_ready_answers_200_otherwise(client):
    assert not drain.draining()
    assert client.get("/ready").status_code == 200


class FakeArbiter:
    """What drain.install uses of gunicorn's Arbiter."""

    def __init__(self) -> None:
        self.woken = threading.Event()
        self.murdered = 0

        class Log:
            def info(self, *args: object) -> None:
                pass

        self.log = Log()

    def handle_term(self) -> None:
        raise StopIteration

    def murder_workers(self) -> None:
        self.murdered += 1

    def wakeup(self) -> None:
        self.woken.set()


def test_sigterm_drains_then_stops(draining):
    drain.reset()
    arbiter = FakeArbiter()
    drain.install(arbiter, 0.3)
    arbiter.handle_term()  # the first SIGTERM: no StopIteration yet
    assert drain.draining()
    arbiter.murder_workers()  # a turn of the master's loop before the deadline
    assert arbiter.murdered == 1
    assert arbiter.woken.wait(5), "the master is woken when the drain ends"
    with pytest.raises(StopIteration):
        arbiter.murder_workers()
    assert arbiter.murdered == 2  # its own work still done on that turn


def test_second_sigterm_stops_at_once(draining):
    arbiter = FakeArbiter()
    drain.install(arbiter, 60)
    arbiter.handle_term()
    with pytest.raises(StopIteration):
        arbiter.handle_term()


def test_no_drain_configured_keeps_gunicorns_sigterm():
    arbiter = FakeArbiter()
    drain.install(arbiter, 0)
    with pytest.raises(StopIteration):
        arbiter.handle_term()
    assert not drain.draining()


def embed(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
    conn.request(
        "POST",
        "/v1/embeddings",
        b'{"model": "m", "input": "the cat"}',
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    resp.read()
    return resp


@pytest.mark.slow
def test_real_gunicorn_drains_on_sigterm(tmp_path: Path, tiny_ckpt, gunicorn_server):
    models_list = write_models_list(
        tmp_path / "models_list.yaml", {"models": {"m": {"path": str(tiny_ckpt)}}}
    )
    drain_s = 3.0
    server = gunicorn_server(models_list, workers=2, env={"ZEROTH_DRAIN_SECONDS": str(drain_s)})
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert embed(kept).getheader("Connection") == "keep-alive"
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert embed(idle).getheader("Connection") == "keep-alive"  # then left idle

    sigterm = time.monotonic()
    server.terminate()
    while (status := status_of(server.url + "/ready")) == 200:
        assert time.monotonic() - sigterm < 2, "/ready still 200 two seconds after SIGTERM"
        time.sleep(0.02)
    assert status == 503
    # Draining: answered, and told to reconnect, on the kept-alive connection and a new one.
    resp = embed(kept)
    assert (resp.status, resp.getheader("Connection")) == (200, "close")
    fresh = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    resp = embed(fresh)
    assert (resp.status, resp.getheader("Connection")) == (200, "close")
    assert not refuses_connections(server.port)

    while not refuses_connections(server.port):
        assert time.monotonic() - sigterm < drain_s + 5, "listener still open"
        time.sleep(0.02)
    closed = time.monotonic()
    # Refused as soon as the drain ends, although a worker still holds the idle kept-alive
    # connection (gunicorn keeps it a moment, to answer "Connection: close" on it): connections
    # made meanwhile would otherwise queue on the listener, unanswered, to be reset at exit.
    assert drain_s - 0.1 <= closed - sigterm < drain_s + 1.0
    assert server.wait(timeout=30) == 0
    assert time.monotonic() - closed > 0.5, "nothing was left to finish: a weaker test"
    assert "draining for 3.0 s" in server.log_text()
