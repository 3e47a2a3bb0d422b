"""Reliability under load (`python -m bench.loadtest`, lean): a real gunicorn server with 2
workers on the tiny checkpoint, 4 closed-loop clients for 12 s, while it is reloaded by SIGHUP
and by POST /admin/reload (once with a broken list), loses a worker to SIGKILL, and is stopped
with SIGTERM with requests in flight. See bench/loadtest.py for what "0 failed" means.

The tool runs as a command, as an operator runs it (the tests import nothing from bench/); its
report is the JSON it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_models_list

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_no_request_fails_through_reloads_a_killed_worker_and_shutdown(tmp_path: Path, tiny_ckpt):
    models_list = write_models_list(
        tmp_path / "models_list.yaml", {"models": {"m": {"path": str(tiny_ckpt)}}}
    )
    cmd = [
        sys.executable, "-m", "bench.loadtest", "--models-list", str(models_list), "--model", "m",
        "--duration", "12", "--clients", "4", "--workers", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    print(json.dumps(report | {"failures": report["failures"][:20]}, indent=1))
    assert report["failures"] == [] and report["failed"] == 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (report["clients"], report["workers"]) == (4, 2)
    assert report["ok"] >= 200
    events = [what for _, what in report["events"]]
    assert events == [
        "SIGHUP: list with an extra alias",
        "extra alias served",
        "POST /admin/reload: 200",
        "extra alias gone",
        events[4],  # SIGKILL worker <pid>
        "worker replaced",
        "SIGHUP: broken list",
        "POST /admin/reload with the broken list: 400",
        "SIGHUP: list restored",
    ]
    assert events[4].startswith("SIGKILL worker ")
    # Only the killed worker's requests may need their connection retried: none before the
    # kill, none later than the replacement, at most one per client.
    assert report["retries"] <= report["clients"]
    assert all(0 <= t <= 3 for t in report["retry_times_after_kill_s"]), report[
        "retry_times_after_kill_s"
    ]
    assert report["shutdown_ok"] == report["shutdown_in_flight"] == 4
    assert report["shutdown_exit_code"] == 0
