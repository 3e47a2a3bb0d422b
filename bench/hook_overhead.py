"""Per-request cost of the cross-cutting work (request id, API-key check, JSON log line, metrics).

Calls the WSGI app directly (no HTTP, no test client) on the tiny checkpoint, so that work is
a visible share of the time; prints microseconds per request for each configuration. The first
row is each route without the middleware (zeroth/api/middleware.py): Flask's own app for
GET /health, `routes.embed` alone for POST /v1/embeddings.

    python -m bench.hook_overhead [--requests 20000]
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import orjson
from flask import Request

from zeroth.api.app import create_app
from zeroth.api.request_log import Notes
from zeroth.api.request_log import log as request_logger
from zeroth.api.routes import embed
from zeroth.api.state import state_of
from zeroth.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench"


def _tiny_models_list(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_models_list, write_tiny_checkpoint

    write_tiny_checkpoint(folder / "tiny")
    return write_models_list(folder / "models_list.yaml", {"models": {"m": {"path": "tiny"}}})


def _without_middleware(app):
    """The routes alone: Flask's app for every path but POST /v1/embeddings, which the
    middleware would answer with `routes.embed`."""
    flask = app.wsgi_app.flask
    state = state_of(app)

    def bare(environ, start_response):
        if environ["PATH_INFO"] != "/v1/embeddings":
            return flask(environ, start_response)
        body = embed(state.registry, Request(environ), Notes(), state.metrics)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return bare


def _environ(method: str, path: str, body: bytes, auth: bool) -> dict:
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
    }
    if auth:
        env["HTTP_AUTHORIZATION"] = f"Bearer {KEY}"
    return env


def _round(app, method: str, path: str, body: bytes, auth: bool, n: int) -> float:
    base = _environ(method, path, body, auth)

    def start_response(status, headers):
        assert status.startswith("200"), status

    t = time.perf_counter()
    for _ in range(n):
        b"".join(app({**base, "wsgi.input": io.BytesIO(body)}, start_response))
    return (time.perf_counter() - t) / n * 1e6


def _time_all(configs: dict, method: str, path: str, body: bytes, n: int) -> dict[str, float]:
    """Best of several rounds, the configurations interleaved so that noise hits all alike."""
    best = dict.fromkeys(configs, float("inf"))
    for app, auth in configs.values():
        _round(app, method, path, body, auth, 200)  # warm-up
    for _ in range(7):
        for name, (app, auth) in configs.items():
            best[name] = min(best[name], _round(app, method, path, body, auth, n))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="zeroth-hooks-"))
    models_list = _tiny_models_list(folder)
    # The log line goes to a real file, as it would to gunicorn's stderr.
    request_logger.handlers[:] = [logging.FileHandler(folder / "requests.log")]
    request_logger.setLevel(logging.INFO)
    request_logger.propagate = False
    body = orjson.dumps({"model": "m", "input": "the cat sat on the mat"})

    def app(request_log: bool, keys: tuple[str, ...]):
        return create_app(Settings(models_list=models_list, request_log=request_log, api_keys=keys))

    configs = {
        "routes alone (no middleware)": (_without_middleware(app(False, ())), False),
        "middleware: request id + metrics": (app(False, ()), False),
        "middleware: + key check": (app(False, (KEY,)), True),
        "middleware: + key check + JSON log line": (app(True, (KEY,)), True),
    }
    health = _time_all(configs, "GET", "/health", b"", args.requests)
    embed = _time_all(configs, "POST", "/v1/embeddings", body, args.requests)
    rows = [(name, health[name], embed[name]) for name in configs]
    base_h, base_e = rows[0][1], rows[0][2]
    print(f"{'configuration':42} {'GET /health us':>15} {'+':>7} {'POST embed us':>14} {'+':>7}")
    for name, h, e in rows:
        print(f"{name:42} {h:15.1f} {h - base_h:7.1f} {e:14.1f} {e - base_e:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
