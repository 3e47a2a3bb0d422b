"""The server as deployed (gunicorn + the repository's gunicorn.conf.py), in a child process.

One way to start, wait for and stop a real server, shared by the tests, the benchmarks and the
load tools, so that all of them measure and check the same thing users run.

    with GunicornServer(models_list, workers=2, env={"ZEROTH_API_KEYS": "k"}) as server:
        urllib.request.urlopen(server.url + "/ready")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO / "gunicorn.conf.py"


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice, so parallel runs do not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status `url` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def refuses_connections(port: int) -> bool:
    """Whether nothing listens on the loopback `port` any more (a stopped listener)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def wait_ready(
    url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None, log: Path | None = None
) -> float:
    """Poll `url` until it answers 200; the seconds waited. Fails at once if `proc` exits."""
    start = time.perf_counter()
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.is_file() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before {url}:\n{tail}")
        if status_of(url) == 200:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{url} not ready after {timeout:.0f} s")
        time.sleep(0.02)


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # One thread per worker: torch/OpenMP and the tokenizer's pool would otherwise
    # oversubscribe the cores the workers already share.
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def start_process(
    cmd: Sequence[str],
    env: Mapping[str, str],
    log_path: Path | None = None,
    cpus: set[int] | None = None,
    cwd: Path = REPO,
) -> subprocess.Popen:
    """A child in its own session (so stop_process reaches its workers), output to `log_path`."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)  # inherited by gunicorn's workers

    try:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pin if cpus else None,
        )
    finally:
        if log_path:
            log.close()  # the child holds its own descriptor


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM the child's process group (gunicorn master and workers); SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    return proc.returncode


def gunicorn_command(port: int, workers: int, extra: Sequence[str] = (), app: str = "server:app"):
    """gunicorn with gunicorn.conf.py on a private loopback port; no control socket, so
    parallel instances do not collide."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(GUNICORN_CONF),
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "--no-control-socket",
        *extra,
        app,
    ]


class GunicornServer:
    """Our server as deployed, started on `start()` (or `with`), ready when it returns."""

    def __init__(
        self,
        models_list: str | os.PathLike,
        *,
        workers: int = 2,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        cpus: set[int] | None = None,
        ready_timeout: float = 120.0,
        ready_path: str = "/ready",
    ):
        self.models_list = Path(models_list)
        self.workers = workers
        self.port = port or free_port()
        self.env = {"MODELS_LIST": str(self.models_list), **(env or {})}
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.cpus = cpus
        self.ready_timeout = ready_timeout
        self.ready_path = ready_path
        self.proc: subprocess.Popen | None = None
        self.ready_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The gunicorn master's pid."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> GunicornServer:
        cmd = gunicorn_command(self.port, self.workers, self.extra_args)
        self.proc = start_process(cmd, server_env(self.env), self.log_path, self.cpus)
        try:
            self.ready_seconds = wait_ready(
                self.url + self.ready_path, self.ready_timeout, self.proc, self.log_path
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        return stop_process(self.proc, timeout) if self.proc is not None else None

    def terminate(self) -> None:
        """SIGTERM to the master alone, as Kubernetes and Docker send it (to the container's
        first process): gunicorn drains (zeroth/drain.py) and stops gracefully; `wait()` for
        it. `stop()` signals the whole process group, which skips the drain. `start()` again
        brings a new server up on the same port."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        """The master's exit status, once it has exited (TimeoutExpired after `timeout`)."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
