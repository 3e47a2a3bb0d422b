"""nginx in front of the replicas (deploy/nginx/zeroth.conf.template, zeroth/proxy.py): the
template renders as compose's nginx image renders it, real nginx accepts it, compose wires it
to the server, and through a real nginx the requests reach real replicas.

The rolling restart and the slow client are tests/test_rolling_restart.py.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_models_list
from zeroth.launch import GunicornServer
from zeroth.proxy import (
    SERVER_PARAMETERS,
    TEMPLATE,
    NginxProxy,
    nginx_binary,
    render,
    upstream_servers,
)

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"


def test_render_fills_only_our_variables():
    text = "listen ${ZEROTH_PROXY_LISTEN}; proxy_set_header Host $host; ${HOME}x"
    out = render(text, {"ZEROTH_PROXY_LISTEN": "8080", "HOME": "/root"})
    assert out == "listen 8080; proxy_set_header Host $host; /rootx"
    with pytest.raises(KeyError, match="ZEROTH_PROXY_LISTEN"):
        render(text, {"HOME": "/root"})


def test_template_has_exactly_the_documented_variables():
    names = set(re.findall(r"\$\{([A-Z0-9_]+)\}", TEMPLATE.read_text()))
    assert names == {"ZEROTH_PROXY_LISTEN", "ZEROTH_UPSTREAM_SERVERS"}


def test_nginx_accepts_the_rendered_config(tmp_path: Path):
    proxy = NginxProxy(["127.0.0.1:9", "127.0.0.1:10"], folder=tmp_path / "nginx")
    conf = proxy.write_config()
    check = subprocess.run(proxy.command(conf, "-t"), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    rendered = (tmp_path / "nginx" / "zeroth.conf").read_text()
    assert f"server 127.0.0.1:10 {SERVER_PARAMETERS};" in rendered
    assert "proxy_request_buffering on;" in rendered
    assert nginx_binary()


def test_compose_proxy_uses_the_template_and_the_server():
    compose = yaml.safe_load(COMPOSE.read_text())
    nginx = compose["services"]["nginx"]
    assert nginx["profiles"] == ["proxy"], "optional: only with --profile proxy"
    (mount,) = nginx["volumes"]
    source, target, mode = mount.split(":")
    assert (REPO / source).resolve() == TEMPLATE
    assert target.startswith("/etc/nginx/templates/") and target.endswith(".conf.template")
    assert mode == "ro"
    env = nginx["environment"]
    server = compose["services"]["zeroth"]
    port = server["environment"].get("ZEROTH_BIND", "0.0.0.0:8000").rpartition(":")[2]
    assert env["ZEROTH_UPSTREAM_SERVERS"] == upstream_servers([f"zeroth:{port}"])
    listen = env["ZEROTH_PROXY_LISTEN"]
    assert any(str(p).endswith(f":{listen}") for p in nginx["ports"])
    assert "zeroth" in nginx["depends_on"]


@pytest.mark.slow
def test_requests_through_nginx_reach_both_replicas(tmp_path: Path, tiny_ckpt):
    models_list = write_models_list(
        tmp_path / "models_list.yaml", {"models": {"m": {"path": str(tiny_ckpt)}}}
    )
    replicas = [
        GunicornServer(models_list, workers=1, log_path=tmp_path / f"r{i}.log") for i in range(2)
    ]
    try:
        for replica in replicas:
            replica.start()
        with NginxProxy([f"127.0.0.1:{r.port}" for r in replicas]) as proxy:
            body = b'{"model": "m", "input": ["the cat", "a dog"]}'
            for _ in range(6):
                req = urllib.request.Request(
                    proxy.url + "/v1/embeddings", body, {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.status == 200
            with urllib.request.urlopen(proxy.url + "/ready", timeout=10) as resp:
                assert resp.status == 200
            records = proxy.log_records()
    finally:
        for replica in replicas:
            replica.stop()
    assert len(records) == 7
    assert {r["upstream"] for r in records} == {f"127.0.0.1:{r.port}" for r in replicas}
