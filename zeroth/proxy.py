"""nginx in front of Zeroth replicas, as a child process (the tests, bench.rolling_restart).

deploy/nginx/zeroth.conf.template is rendered as compose's nginx image renders it (envsubst of
the variables given) and included from a minimal nginx.conf written here: a private prefix
folder for the pid file, logs and temporary files, a loopback port, no daemon and no system
service. Debian's `nginx` package provides the binary (`.ci/run` installs it).

    with NginxProxy(["127.0.0.1:8001", "127.0.0.1:8002"]) as proxy:
        urllib.request.urlopen(proxy.url + "/ready")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from zeroth.launch import REPO, free_port, start_process, stop_process

TEMPLATE = REPO / "deploy" / "nginx" / "zeroth.conf.template"
_VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render(template: str, values: Mapping[str, str]) -> str:
    """envsubst restricted to `values`, as the nginx image runs it: nginx's own `$host` and
    the like stay as they are. A `${NAME}` left without a value is an error, not an empty
    string in the middle of a directive."""
    missing = sorted({m for m in _VARIABLE.findall(template) if m not in values})
    if missing:
        raise KeyError(f"no value for {', '.join(missing)} in {TEMPLATE.name}")
    return _VARIABLE.sub(lambda m: values[m.group(1)], template)


# Per replica: one refused connection takes it out of rotation, and nginx tries it again after
# 2 s (nginx's default, 10 s, would leave a restarted replica idle for up to 10 s). Compose's
# ZEROTH_UPSTREAM_SERVERS uses the same (tests/test_proxy.py checks).
SERVER_PARAMETERS = "max_fails=1 fail_timeout=2s"


def upstream_servers(addresses: Sequence[str]) -> str:
    return " ".join(f"server {address} {SERVER_PARAMETERS};" for address in addresses)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx; .ci/run does)")
    return found


class NginxProxy:
    """nginx on a loopback port in front of `upstreams` ("host:port"), started on `start()`."""

    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        port: int | None = None,
        folder: Path | None = None,
        template: Path = TEMPLATE,
    ):
        self.upstreams = list(upstreams)
        self.port = port or free_port()
        self.template = template
        self._own_folder = folder is None
        self.folder = Path(folder) if folder else None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        assert self.folder is not None, "not started"
        return self.folder / "access.log"

    @property
    def error_log(self) -> Path:
        assert self.folder is not None, "not started"
        return self.folder / "error.log"

    def write_config(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="zeroth-nginx-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        # Run as root, nginx's workers switch to an unprivileged user, which must reach the
        # temporary folders the master creates in here for them.
        self.folder.chmod(0o755)
        values = {
            "ZEROTH_PROXY_LISTEN": f"127.0.0.1:{self.port}",
            "ZEROTH_UPSTREAM_SERVERS": upstream_servers(self.upstreams),
        }
        (self.folder / "zeroth.conf").write_text(render(self.template.read_text(), values))
        d = self.folder
        main = f"""\
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    include {d}/zeroth.conf;
    access_log {d}/access.log zeroth_upstream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
}}
"""
        conf = d / "nginx.conf"
        conf.write_text(main)
        return conf

    def command(self, conf: Path, *extra: str) -> list[str]:
        assert self.folder is not None
        # -e: the error log from the first line on (before the config names one).
        return [
            nginx_binary(),
            "-p",
            str(self.folder),
            "-e",
            str(self.error_log),
            "-c",
            str(conf),
            *extra,
        ]

    def start(self, timeout: float = 30.0) -> NginxProxy:
        conf = self.write_config()
        check = subprocess.run(self.command(conf, "-t"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused {conf}:\n{check.stderr}")
        self.proc = start_process(self.command(conf), os.environ, self.folder / "nginx.out")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"nginx not listening on {self.port} after {timeout} s"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
        if self._own_folder and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.folder else ""

    def log_records(self) -> list[dict]:
        """The access log so far: one dict per request (fields: the template's log_format)."""
        if self.folder is None or not self.access_log.is_file():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def __enter__(self) -> NginxProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
