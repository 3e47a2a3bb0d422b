"""Per-request cost of the reliability hooks (request id, API-key check, JSON request log).

Calls the WSGI app directly (no HTTP, no test client) on the tiny checkpoint, so the hooks are
a visible share of the time; prints microseconds per request for each configuration. The Flask
configurations run with ZEROTH_FAST_PATH=0; the last row is the lean path that serves
POST /v1/embeddings by default (zeroth/api/fast.py), with every hook's work.

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

from server import create_app
from zeroth.api.request_log import log as request_logger

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench"


def _tiny_models_list(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_models_list, write_tiny_checkpoint

    write_tiny_checkpoint(folder / "tiny")
    return write_models_list(folder / "models_list.yaml", {"models": {"m": {"path": "tiny"}}})


def _strip(app, *names: str) -> None:
    """Remove our hooks by name: the app as it would be without them."""
    for funcs in (app.before_request_funcs, app.after_request_funcs):
        funcs[None] = [f for f in funcs.get(None, []) if f.__name__ not in names]


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

    configs = {}
    flask = {"ZEROTH_FAST_PATH": "0"}
    bare = _with_env(models_list, flask, keys=[])
    _strip(bare, "_request_id", "_log")
    configs["no hooks (before issue 5)"] = (bare, False)
    configs["request id only (log off, no keys)"] = (
        _with_env(models_list, flask | {"ZEROTH_REQUEST_LOG": "0"}, keys=[]),
        False,
    )
    configs["request id + key check"] = (
        _with_env(models_list, flask | {"ZEROTH_REQUEST_LOG": "0"}, keys=[KEY.encode()]),
        True,
    )
    configs["request id + key check + JSON log line"] = (
        _with_env(models_list, flask | {"ZEROTH_REQUEST_LOG": "1"}, keys=[KEY.encode()]),
        True,
    )
    configs["lean path: id + key check + JSON log line"] = (
        _with_env(
            models_list, {"ZEROTH_FAST_PATH": "1", "ZEROTH_REQUEST_LOG": "1"}, [KEY.encode()]
        ),
        True,
    )
    health = _time_all(configs, "GET", "/health", b"", args.requests)
    embed = _time_all(configs, "POST", "/v1/embeddings", body, args.requests)
    rows = [(name, health[name], embed[name]) for name in configs]
    base_h, base_e = rows[0][1], rows[0][2]
    print(f"{'configuration':42} {'GET /health us':>15} {'+':>7} {'POST embed us':>14} {'+':>7}")
    for name, h, e in rows:
        print(f"{name:42} {h:15.1f} {h - base_h:7.1f} {e:14.1f} {e - base_e:7.1f}")
    return 0


def _with_env(models_list: Path, env: dict[str, str], keys: list[bytes]):
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return create_app(models_list, api_keys=keys)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    raise SystemExit(main())
