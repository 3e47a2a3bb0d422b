"""The bulk indexer on a real two-node Ray cluster that loses a node mid-run.

Two `ray start --block` nodes on this machine (one CPU each, each in its own session, temp dir
and ports) form the cluster; `python -m index --address` embeds SciFact x 5 with one actor per
node. Once a shard is committed, every process of the second node (its raylet, agents and
workers) is SIGKILLed; a replacement node joins, as KubeRay replaces a lost worker pod. The run
must finish with every id exactly once and the server's vectors. Everything the test started is
killed at the end, whatever happened.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_app

from index.shards import committed_shards, read_output
from index.sources import join_fields
from tests.real_server import ROOT, SMOLLM2_DIR
from tests.test_index import SCIFACT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("smollm2_model")]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
COPIES = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> list[int]:
    """Live processes of a session (Ray gives each worker its own process group, not session)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(pid))
    return pids


def kill_session(sid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pids := session_processes(sid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes {pids} survived SIGKILL"
        time.sleep(0.1)


class RayNode:
    """`ray start --block` in a session of its own: a head, or a node joining `head`."""

    def __init__(self, folder: Path, env: dict[str, str], head: str | None = None):
        self.folder = folder
        folder.mkdir(parents=True)
        self.port = free_port() if head is None else None
        self.address = head or f"127.0.0.1:{self.port}"
        # Every port its own: two nodes on one machine would otherwise both take the defaults.
        ports = {
            f"--{name}": str(free_port())
            for name in (
                "node-manager-port",
                "object-manager-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        }
        cmd = [RAY, "start", "--block", "--num-cpus", "1", "--temp-dir", str(folder)]
        cmd += ["--object-store-memory", str(256 << 20), "--disable-usage-stats"]
        cmd += [item for pair in ports.items() for item in pair]
        if head is None:
            cmd += ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        else:
            cmd += ["--address", head]
        self.log = folder / "ray-start.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_started(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while "will now block forever" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"ray start not done after {timeout} s"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the node: `ray start`, raylet, GCS (on the head), agents and workers."""
        kill_session(self.proc.pid)
        self.proc.wait()


@pytest.fixture
def cluster() -> Iterator[tuple[list[RayNode], dict[str, str], Path]]:
    # Ray's sockets live in the temp dir, and a Unix socket path has at most 107 bytes: a short
    # folder of our own rather than pytest's.
    folder = Path(tempfile.mkdtemp(prefix="zray-"))
    # Token auth with a token of our own: nothing read from (or written to) ~/.ray.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_DEDUP_LOGS": "0",  # every actor's start-up line reaches the driver's stderr
    }
    nodes: list[RayNode] = []
    try:
        yield nodes, env, folder
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(folder, ignore_errors=True)


def scifact() -> list[dict]:
    """SciFact (ZEROTH_SCIFACT, else the evaluation data beside the checkout); where it is
    missing, as many synthetic documents of its size, so that the test runs on any machine."""
    path = Path(os.environ.get("ZEROTH_SCIFACT") or SCIFACT)
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    rng = random.Random(0)
    words = "the of cell protein gene expression patients study results increased risk".split()
    return [
        {"_id": str(i), "title": f"doc {i}", "text": " ".join(rng.choices(words, k=250))}
        for i in range(5183)
    ]


def actors_started(stderr: Path) -> set[str]:
    """The pids of the embedding actors whose start-up line reached the driver."""
    log = stderr.read_text(errors="replace") if stderr.is_file() else ""
    return set(re.findall(r"pid=(\d+)[^\n]*?index: tokenizing with", log))


def expected_documents(path: Path) -> dict[str, str]:
    records = scifact()
    texts = {}
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for k in range(COPIES):
            for r in records:
                doc_id = f"{r['_id']}#{k}"
                f.write(json.dumps({**r, "_id": doc_id}) + "\n")
                texts[doc_id] = join_fields([r["title"], r["text"]])
    return texts


def test_node_lost_midway_the_run_completes_with_every_id_once(tmp_path: Path, cluster):
    nodes, env, folder = cluster
    corpus = tmp_path / "corpus.jsonl.gz"
    texts = expected_documents(corpus)

    head = RayNode(folder / "head", env)
    nodes.append(head)
    head.wait_started()
    second = RayNode(folder / "node2", env, head=head.address)
    nodes.append(second)
    second.wait_started()

    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "index", str(corpus), "--out", str(out),
        "--checkpoint", str(SMOLLM2_DIR), "--id-field", "_id", "--text-field", "title,text",
        "--address", head.address, "--num-actors", "2",
        "--batch-size", "1000", "--shard-rows", "2000",
    ]  # fmt: skip
    stderr = tmp_path / "driver.err"
    with open(stderr, "wb") as err:
        driver = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )
    try:
        # Mid-run: both actors up (one per node) and a shard already committed.
        deadline = time.monotonic() + 300
        while not (committed_shards(out) and len(actors_started(stderr)) == 2):
            assert driver.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard after 300 s"
            time.sleep(0.05)
        second.kill()
        assert not session_processes(second.proc.pid)
        written_at_kill = sum(1 for _ in committed_shards(out))
        replacement = RayNode(folder / "node3", env, head=head.address)
        nodes.append(replacement)
        replacement.wait_started()
        stdout, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            kill_session(driver.pid)
    log = stderr.read_text(errors="replace")
    assert driver.returncode == 0, log[-3000:]
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    assert summary["documents"] == summary["new"] == len(texts)
    assert summary["duplicate_ids"] == 0
    assert written_at_kill < summary["shards"], "the node was lost after the run had finished"
    # The lost node's actor was started again, on the replacement: three actors in all.
    assert len(actors_started(stderr)) >= 3, log[-3000:]

    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(texts) and set(ids) == set(texts)
    column = table.column("vector").combine_chunks()
    vectors = column.values.to_numpy().reshape(len(ids), column.type.list_size)
    row = {doc_id: i for i, doc_id in enumerate(ids)}
    sample = random.Random(0).sample(sorted(texts), 256)
    models_list = tmp_path / "models_list.yaml"
    models_list.write_text(f"models:\n  m:\n    path: {SMOLLM2_DIR}\n")
    client = make_app(models_list).test_client()
    resp = client.post(
        "/v1/embeddings",
        json={"model": "m", "input": [texts[i] for i in sample], "encoding_format": "base64"},
    )
    assert resp.status_code == 200
    want = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in resp.get_json()["data"]]
    )
    np.testing.assert_allclose(vectors[[row[i] for i in sample]], want, atol=1e-6)
