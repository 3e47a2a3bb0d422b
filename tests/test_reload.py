"""Reload without downtime, in one process: the admin endpoint, SIGHUP for the dev server,
numbered checkpoint versions, and requests in flight during a swap."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import make_app, write_models_list
from test_api_embeddings import assert_error

import zeroth.api.routes as routes
from zeroth.api.state import state_of
from zeroth.launch import free_port, server_env, start_process, stop_process, wait_ready
from zeroth.models_list import ConfigError
from zeroth.registry import ModelRegistry, RegistryHolder, newest_version
from zeroth.reload import Reloader

KEY = "sk-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _list(path: Path, models: dict) -> Path:
    return write_models_list(path, {"models": models, "default": next(iter(models))})


@pytest.fixture
def setup(tmp_path: Path, tiny_ckpt: Path, tiny_ckpt_weighted: Path):
    path = _list(tmp_path / "models_list.yaml", {"m": {"path": str(tiny_ckpt)}})
    app = make_app(path, api_keys=(KEY,))
    return app, path, tiny_ckpt, tiny_ckpt_weighted


def _aliases(client) -> list[str]:
    return [m["id"] for m in client.get("/v1/models", headers=AUTH).get_json()["data"]]


def test_admin_reload_swaps_in_the_new_list(setup) -> None:
    app, path, tiny, tiny8 = setup
    client = app.test_client()
    before = client.post("/v1/embeddings", json={"input": "the cat"}, headers=AUTH).get_json()
    _list(path, {"m": {"path": str(tiny8)}, "extra": {"path": str(tiny)}})
    resp = client.post("/admin/reload", headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {
        "status": "reloaded",
        "models": ["m", "extra"],
        "workers": "single process",
    }
    assert _aliases(client) == ["m", "extra"]
    after = client.post("/v1/embeddings", json={"input": "the cat"}, headers=AUTH).get_json()
    assert len(before["data"][0]["embedding"]) == 16
    assert len(after["data"][0]["embedding"]) == 8


@pytest.mark.parametrize(
    "broken, reason",
    [
        ("models: {m: {path: nowhere}}\n", "models.m: "),
        ("models: [\n", "invalid YAML"),
        ("models: {m: {path: x, colour: red}}\n", "models.m.colour: unknown key"),
    ],
)
def test_broken_list_keeps_the_old_models(setup, broken: str, reason: str) -> None:
    app, path, *_ = setup
    client = app.test_client()
    before = state_of(app).registry
    path.write_text(broken)
    msg = assert_error(client.post("/admin/reload", headers=AUTH), 400, None, "reload_failed")
    assert msg.startswith("Reload failed; still serving the previous models: ")
    assert reason in msg and "\n" not in msg
    assert state_of(app).registry is before
    assert client.post("/v1/embeddings", json={"input": "cat"}, headers=AUTH).status_code == 200


def test_admin_reload_needs_a_key(setup, models_list: Path) -> None:
    app, *_ = setup
    client = app.test_client()
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer no"}).status_code == 401
    assert client.get("/admin/reload", headers=AUTH).status_code == 405
    # Without keys nobody may make the server load models over HTTP.
    open_app = make_app(models_list).test_client()
    assert_error(open_app.post("/admin/reload"), 403, None, "admin_disabled")


def test_request_in_flight_finishes_on_the_old_model(setup, monkeypatch) -> None:
    app, path, tiny, tiny8 = setup
    client = app.test_client()
    entered, release = threading.Event(), threading.Event()
    real_tokenize = routes.tokenize

    def paused_tokenize(req, model):
        if req.user == "pause":
            entered.set()
            assert release.wait(10)
        return real_tokenize(req, model)

    monkeypatch.setattr(routes, "tokenize", paused_tokenize)
    body = {"input": "the cat", "user": "pause"}
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.post, "/v1/embeddings", json=body, headers=AUTH)
        assert entered.wait(10)
        _list(path, {"m": {"path": str(tiny8)}})
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
        new = client.post("/v1/embeddings", json={"input": "the cat"}, headers=AUTH)
        release.set()
        old = in_flight.result(10)
    assert old.status_code == 200 and len(old.get_json()["data"][0]["embedding"]) == 16
    assert new.status_code == 200 and len(new.get_json()["data"][0]["embedding"]) == 8


def test_no_request_fails_during_repeated_reloads(setup) -> None:
    app, path, tiny, _ = setup
    client = app.test_client()
    texts = ["the cat sat", "a dog ran", "hello world"]
    reference = client.post("/v1/embeddings", json={"input": texts}, headers=AUTH).get_json()
    stop = time.monotonic() + 2.0
    lists = [{"m": {"path": str(tiny)}}, {"m": {"path": str(tiny)}, "x": {"path": str(tiny)}}]

    def hammer() -> int:
        n = 0
        local = app.test_client()
        while time.monotonic() < stop:
            resp = local.post("/v1/embeddings", json={"input": texts}, headers=AUTH)
            assert resp.status_code == 200, resp.get_json()
            assert resp.get_json()["data"] == reference["data"]
            n += 1
        return n

    with ThreadPoolExecutor(3) as pool:
        clients = [pool.submit(hammer) for _ in range(2)]
        reloads = 0
        while time.monotonic() < stop:
            _list(path, lists[reloads % 2])
            assert client.post("/admin/reload", headers=AUTH).status_code == 200
            reloads += 1
        served = sum(f.result() for f in clients)
    assert reloads >= 3 and served >= 10


def test_numbered_versions_serve_the_newest(tmp_path: Path, tiny_ckpt: Path, tiny_ckpt_weighted):
    versions = tmp_path / "versions"
    shutil.copytree(tiny_ckpt, versions / "1")
    (versions / "10-draft").mkdir()  # not a number: ignored
    (versions / "7").mkdir()  # no checkpoint inside: ignored
    assert newest_version(versions) == versions / "1"
    assert newest_version(tiny_ckpt) == tiny_ckpt
    path = _list(tmp_path / "models_list.yaml", {"m": {"path": "versions"}})
    app = make_app(path, api_keys=(KEY,))
    client = app.test_client()
    assert (
        len(
            client.post("/v1/embeddings", json={"input": "cat"}, headers=AUTH).get_json()["data"][
                0
            ]["embedding"]
        )
        == 16
    )
    shutil.copytree(tiny_ckpt_weighted, versions / "2")
    assert client.post("/admin/reload", headers=AUTH).status_code == 200
    vec = client.post("/v1/embeddings", json={"input": "cat"}, headers=AUTH).get_json()
    assert len(vec["data"][0]["embedding"]) == 8


def test_reloader_swaps_the_holder_and_keeps_it_on_failure(tmp_path, tiny_ckpt, tiny_ckpt_weighted):
    path = _list(tmp_path / "models_list.yaml", {"m": {"path": str(tiny_ckpt)}})
    holder = RegistryHolder(ModelRegistry.empty())
    reloader = Reloader(path, holder)
    first = reloader.reload()
    assert holder.registry is first and [m.alias for m in first] == ["m"]
    _list(path, {"m": {"path": str(tiny_ckpt_weighted)}, "n": {"path": str(tiny_ckpt)}})
    second = reloader.reload()
    assert holder.registry is second and second.get("m").native_dim == 8
    path.write_text("models: [\n")
    with pytest.raises(ConfigError):
        reloader.reload()
    assert holder.registry is second


def test_admin_reload_signals_the_gunicorn_master(setup) -> None:
    """Under gunicorn each worker knows its master (gunicorn.conf.py's post_fork): a reload
    through one worker reloads here, then SIGHUPs the master to replace every worker."""
    app, path, _, tiny8 = setup
    # A stand-in master: SIGHUP's default action ends it, which shows the signal was sent.
    # Its SIGHUP is reset to the default before exec: an ignored signal is inherited, and
    # libraries loaded earlier in the test process (Ray among them) may have ignored it.
    master = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        state_of(app).reloader.master_pid = master.pid
        _list(path, {"m": {"path": str(tiny8)}})
        resp = app.test_client().post("/admin/reload", headers=AUTH)
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["workers"] == "replacing"
        assert master.wait(10) == -signal.SIGHUP
        assert state_of(app).registry.get("m").native_dim == 8
    finally:
        master.kill()
        master.wait()


@pytest.mark.slow
def test_sighup_reloads_the_dev_server(tmp_path: Path, tiny_ckpt: Path, tiny_ckpt_weighted):
    """`python server.py` in its own process: a signal handler in this test process would be
    at the mercy of whatever native libraries earlier tests loaded."""
    path = _list(tmp_path / "models_list.yaml", {"m": {"path": str(tiny_ckpt)}})
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "server.py", "--models-list", str(path), "--port", str(port)]
    proc = start_process(cmd, server_env(), log)
    url = f"http://127.0.0.1:{port}/v1/models"

    def served() -> list[str]:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return [m["id"] for m in json.load(resp)["data"]]

    def wait_for(expected: list[str]) -> list[str]:
        deadline = time.monotonic() + 60
        got: list[str] = []
        while time.monotonic() < deadline and got != expected:
            assert proc.poll() is None, log.read_text()
            try:
                got = served()
            except OSError:
                pass
            time.sleep(0.1)
        return got

    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", 60, proc, log)
        assert served() == ["m"]
        path.write_text("models: [\n")  # broken: logged, the old models stay
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload failed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "still serving the previous models" in log.read_text()
        assert served() == ["m"]
        _list(path, {"m": {"path": str(tiny_ckpt_weighted)}, "n": {"path": str(tiny_ckpt)}})
        proc.send_signal(signal.SIGHUP)
        assert wait_for(["m", "n"]) == ["m", "n"]
    finally:
        stop_process(proc, 20)
