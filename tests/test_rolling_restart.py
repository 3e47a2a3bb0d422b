"""Two real replicas behind real nginx under steady load: a rolling restart and a slow client
fail no request, and the slow client freezes no worker behind nginx while, sent straight to a
replica, it does (the control). Runs the command anyone can run, `python -m bench.rolling_restart`
(short phases, the tiny checkpoint), and checks its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_models_list

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
WORKER_TIMEOUT = 6


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> dict:
    tmp = tmp_path_factory.mktemp("rolling")
    models_list = write_models_list(
        tmp / "models_list.yaml", {"models": {"m": {"path": str(tiny_ckpt)}}, "default": "m"}
    )
    cmd = [
        sys.executable, "-m", "bench.rolling_restart", "--models-list", str(models_list),
        "--model", "m", "--dataset", "synthetic", "--steady", "4", "--clients", "4",
        "--worker-timeout", str(WORKER_TIMEOUT), "--slow", str(WORKER_TIMEOUT + 6),
        "--keep", str(tmp / "logs"), "--save", str(tmp / "result.json"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    print(proc.stdout, proc.stderr[-3000:])
    assert (tmp / "result.json").is_file(), proc.stderr[-3000:]
    return json.loads((tmp / "result.json").read_text()) | {"exit_code": proc.returncode}


def test_no_request_fails(result):
    assert result["failed"] == 0, result["failures"]
    assert result["exit_code"] == 0
    assert result["steady"]["requests"] > 100
    assert result["during_restarts"]["requests"] > 100


def test_each_replica_drains_then_comes_back_on_its_port(result):
    assert [r["replica"] for r in result["restarts"]] == ["A", "B"]
    for r in result["restarts"]:
        assert r["ready_status_while_draining"] == 503
        assert r["ready_503_after_s"] < 1.0
        # Still serving while /ready says 503, then nginx stops sending to it.
        assert r["served_while_draining"] > 0
        assert r["listener_closed_after_s"] >= result["drain_seconds"] - 0.1
        assert r["sent_while_down"] == 0
        assert r["exit_code"] == 0
        # The next replica was touched only once nginx sent this one requests again.
        assert r["back_in_rotation_after_ready_s"] >= 0


def test_slow_client_freezes_no_worker_behind_nginx(result):
    behind, direct = result["slow_client"]
    assert behind["target"] == "nginx" and direct["target"] == "replica A directly"
    assert behind["bytes_sent"] >= 3  # it really trickled, one byte every 4 s
    assert behind["worker_timeouts"] == 0
    assert behind["load"]["failed"] == 0 and behind["load"]["requests"] > 100
    # The control: the same client straight at gunicorn holds a worker until it is killed.
    assert direct["worker_timeouts"] >= 1
