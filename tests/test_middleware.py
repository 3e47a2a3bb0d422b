"""Every request gets the same treatment, whichever route answers it.

zeroth/api/middleware.py wraps the Flask app: POST /v1/embeddings is answered there by
`routes.embed`, everything else by Flask; the request id, the API key, the X-Request-ID header,
the JSON log line, the metrics and OpenAI's error shape are written once, around both. These
tests send every kind of request (success and every error, on every route) through the real
WSGI callable and check each of those, so that neither route can drift from the other.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.test import EnvironBuilder

from zeroth.api.app import create_app
from zeroth.api.auth import OPEN_PATHS, is_open
from zeroth.api.middleware import RequestMiddleware
from zeroth.api.state import state_of
from zeroth.models_list import load_models_list
from zeroth.registry import ModelRegistry
from zeroth.settings import Settings

KEY = "sk-middleware"
AUTH = {"Authorization": f"Bearer {KEY}"}
RID = "req-middleware-1"
JSON = {"Content-Type": "application/json"}
WRONG = {"Authorization": "Bearer sk-not-it"}
MAX_BODY = 4000
EMBEDDINGS = "/v1/embeddings"
MODEL_RULE = "/v1/models/<path:model_id>"


@pytest.fixture(scope="module")
def registry(models_list: Path) -> ModelRegistry:
    return ModelRegistry.load(load_models_list(models_list))


def keyed_app(models_list: Path, registry: ModelRegistry, **settings):
    settings = Settings(
        models_list=models_list, api_keys=(KEY,), max_body_bytes=MAX_BODY, **settings
    )
    return create_app(settings, registry=registry)


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    endpoint: str  # the metrics label
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    environ: dict = field(default_factory=dict)
    chunked: bytes | None = None  # sent with no Content-Length, as a chunked upload arrives

    def wsgi_environ(self) -> dict:
        environ = EnvironBuilder(
            path=self.path, method=self.method, data=self.body, headers=self.headers
        ).get_environ()
        environ.update(self.environ)
        if self.chunked is not None:
            environ.pop("CONTENT_LENGTH", None)
            environ["wsgi.input"] = io.BytesIO(self.chunked)
            environ["wsgi.input_terminated"] = True
        return environ


def _post(name: str, status: int, body: object, headers=None, **kw) -> Case:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = AUTH | JSON if headers is None else headers
    return Case(name, "POST", EMBEDDINGS, status, EMBEDDINGS, data, headers, **kw)


def _get(name: str, path: str, status: int, endpoint: str, headers=None) -> Case:
    return Case(name, "GET", path, status, endpoint, None, AUTH if headers is None else headers)


OK = {"model": "tiny", "input": ["the cat sat", "hello world"]}
CASES = [
    # POST /v1/embeddings, answered by the middleware itself.
    _post("float", 200, OK, AUTH | JSON | {"X-Request-ID": RID}),
    _post("base64", 200, {"input": "the cat", "encoding_format": "base64"}),
    _post("ids", 200, {"model": "tiny8", "input": [[2, 3, 4], [5]]}),
    _post("dims", 200, {"model": "tiny", "input": "cat", "dimensions": 3}),
    _post("truncate", 200, {"model": "tiny-truncate", "input": "a b c d e f"}),
    _post("bad request id", 200, OK, AUTH | JSON | {"X-Request-ID": "has space"}),
    _post("no key", 401, OK, JSON),
    _post("wrong key", 401, OK, JSON | WRONG | {"X-Request-ID": RID}),
    _post("empty", 400, b""),
    _post("not json", 400, b"{"),
    _post("not an object", 400, b"[1]"),
    _post("unknown field", 400, {"input": "x", "foo": 1}),
    _post("empty input", 400, {"input": ""}),
    _post("bad format", 400, {"input": "x", "encoding_format": "hex"}),
    _post("bad dims", 400, {"input": "x", "dimensions": 999}),
    _post("too long", 400, {"model": "tiny-short", "input": "a b c d e f"}),
    _post("no tokens", 400, {"model": "tiny", "input": [[]]}),
    _post("id past vocab", 400, {"input": [[99999]]}),
    _post("unknown model", 404, {"input": "x", "model": "gpt-4"}),
    _post("415", 415, OK, AUTH | {"Content-Type": "text/plain"}),
    _post("413", 413, {"input": ["cat"] * 1000}),
    _post("413 chunked", 413, b"", AUTH | JSON, chunked=orjson.dumps({"input": ["cat"] * 2000})),
    _post("400 bad content length", 400, OK, environ={"CONTENT_LENGTH": "x"}),
    # Everything else, answered by Flask.
    _get("models", "/v1/models", 200, "/v1/models"),
    _get("model", "/v1/models/org/tiny-slash", 200, MODEL_RULE),
    _get("no such model", "/v1/models/gpt-4", 404, MODEL_RULE),
    _get("health", "/health", 200, "/health", {}),
    _get("ready", "/ready", 200, "/ready", {"X-Request-ID": RID}),
    _get("metrics", "/metrics", 200, "/metrics"),
    _get("openapi", "/openapi.json", 200, "/openapi.json"),
    _get("unknown path", "/v1/completions", 404, "unmatched"),
    _get("unknown path, no key", "/v1/completions", 401, "unmatched", {}),
    _get("models, no key", "/v1/models", 401, "/v1/models", {}),
    _get("405", EMBEDDINGS, 405, "unmatched"),
    _get("405, no key", EMBEDDINGS, 401, "unmatched", {}),
    Case("405 delete", "DELETE", "/v1/models", 405, "unmatched", None, AUTH),
    Case("admin, no key", "POST", "/admin/reload", 401, "/admin/reload", None, {}),
    Case("admin, wrong key", "POST", "/admin/reload", 401, "/admin/reload", None, WRONG),
]


def call(app, environ: dict) -> tuple[str, list[tuple[str, str]], bytes]:
    """The raw WSGI exchange: status line, headers as sent (duplicates kept), body."""
    out: dict = {}

    def start_response(status, headers, exc_info=None):
        out["status"], out["headers"] = status, list(headers)

    body = b"".join(app(environ, start_response))
    return out["status"], out["headers"], body


def headers_named(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def check_error_shape(status: int, headers: list[tuple[str, str]], body: bytes) -> dict:
    assert headers_named(headers, "Content-Type") == ["application/json"]
    assert headers_named(headers, "Content-Length") == [str(len(body))]
    doc = orjson.loads(body)
    assert set(doc) == {"error"}
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return err


def metric_counts(app) -> Counter:
    """zeroth_requests_total by (endpoint, method, status), as the app's registry holds it."""
    counts: Counter = Counter()
    for metric in state_of(app).metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "zeroth_requests_total" and sample.value:
                labels = sample.labels
                key = (labels["endpoint"], labels["method"], int(labels["status"]))
                counts[key] += int(sample.value)
    return counts


@pytest.mark.parametrize("log_inputs", [False, True])
def test_every_route_and_status_gets_the_same_treatment(
    models_list, registry, lines, log_inputs
) -> None:
    app = keyed_app(models_list, registry, log_inputs=log_inputs)
    for case in CASES:
        before = len(lines)
        status_line, headers, body = call(app, case.wsgi_environ())
        status = int(status_line[:3])
        assert status == case.status, (case.name, body[:300])
        # The status line as werkzeug writes it, on either route.
        assert status_line == f"{status} {HTTP_STATUS_CODES[status].upper()}", case.name

        # One request id: the client's when short and printable, else a new one.
        (rid,) = headers_named(headers, "X-Request-ID")
        sent = case.headers.get("X-Request-ID")
        if sent == RID:
            assert rid == RID, case.name
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", rid), case.name

        # OpenAI's error shape for every error (/ready's 503 is a probe's answer, not one).
        if status >= 400:
            err = check_error_shape(status, headers, body)
            expected_code = {
                401: "invalid_api_key",
                405: "method_not_allowed",
                413: "request_too_large",
                415: "unsupported_media_type",
            }.get(status)
            if expected_code is not None:
                assert err["code"] == expected_code, case.name
        if status == 401:
            assert headers_named(headers, "WWW-Authenticate") == ['Bearer realm="zeroth"']
        if status == 405:
            (allow,) = headers_named(headers, "Allow")
            assert case.method not in allow and ("POST" in allow or "GET" in allow)
        if status == 413:
            assert f"{MAX_BODY} bytes" in err["message"]

        # One log line, naming the same id and what was answered.
        (line,) = lines[before:]
        assert line["request_id"] == rid, case.name
        assert (line["method"], line["path"], line["status"]) == (case.method, case.path, status)
        assert line["latency_ms"] > 0
        if case.path == EMBEDDINGS and status == 200:
            usage = orjson.loads(body)["usage"]
            assert line["tokens"] == usage["total_tokens"] and line["model"] and line["inputs"]
        if case.path != EMBEDDINGS:
            assert (line["model"], line["inputs"], line["tokens"]) == (None, None, None)
        # The text only when asked for, and only where there is one.
        assert ("input" in line) == (log_inputs and line["inputs"] is not None), case.name

    expected = Counter((c.endpoint, c.method, c.status) for c in CASES)
    assert metric_counts(app) == expected
    statuses = {c.status for c in CASES}
    assert statuses == {200, 400, 401, 404, 405, 413, 415}


def test_embeddings_answer_as_the_flask_view_would(models_list, registry) -> None:
    """The Flask rule for POST /v1/embeddings runs the same `embed` with Flask's error
    handlers: with no middleware in front, the answers are the same, success and errors."""
    app = keyed_app(models_list, registry)
    assert isinstance(app.wsgi_app, RequestMiddleware)
    flask_alone = app.wsgi_app.flask
    compared = 0
    for case in CASES:
        if case.path != EMBEDDINGS or case.method != "POST" or case.status == 401:
            continue  # the key check is the middleware's, the Flask app has none of its own
        status, headers, body = call(app, case.wsgi_environ())
        f_status, f_headers, f_body = call(flask_alone, case.wsgi_environ())
        assert (status, body) == (f_status, f_body), case.name
        mine = sorted((k, v) for k, v in headers if k != "X-Request-ID")
        assert mine == sorted(f_headers), case.name
        compared += 1
    assert compared >= 18


def test_failures_are_500s_in_openai_shape_and_logged(
    models_list, registry, lines, monkeypatch, caplog
) -> None:
    """A failure of ours, on either route: a traceback in the log, a plain 500 to the client."""
    import zeroth.api.routes as routes

    app = keyed_app(models_list, registry)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(registry.get("tiny").embedder, "embed_ids", broken)
    monkeypatch.setattr(routes, "_model_object", broken)
    failing = [
        _post("embeddings", 500, OK, AUTH | JSON | {"X-Request-ID": RID}),
        _get("models", "/v1/models", 500, "/v1/models"),
    ]
    bodies = []
    for case in failing:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="zeroth.api.errors"):
            status_line, headers, body = call(app, case.wsgi_environ())
        assert status_line == "500 INTERNAL SERVER ERROR", case.name
        check_error_shape(500, headers, body)
        assert b"secret" not in body and b"Traceback" not in body
        traced = [r for r in caplog.records if r.exc_info]
        assert len(traced) == 1, case.name
        assert "secret internal detail" in str(traced[0].exc_info[1])
        assert case.path in traced[0].getMessage()
        assert lines[-1]["status"] == 500 and lines[-1]["path"] == case.path
        (rid,) = headers_named(headers, "X-Request-ID")
        assert lines[-1]["request_id"] == rid
        bodies.append(body)
    assert bodies[0] == bodies[1]
    counts = metric_counts(app)
    assert counts[(EMBEDDINGS, "POST", 500)] == 1 and counts[("/v1/models", "GET", 500)] == 1


def test_not_ready_on_both_routes(models_list, lines) -> None:
    app = create_app(Settings(models_list=models_list), load=False)
    status_line, headers, body = call(app, _post("x", 503, {"input": "cat"}, JSON).wsgi_environ())
    assert status_line == "503 SERVICE UNAVAILABLE"
    assert check_error_shape(503, headers, body)["code"] == "not_ready"
    status_line, headers, body = call(app, _get("ready", "/ready", 503, "/ready").wsgi_environ())
    assert status_line == "503 SERVICE UNAVAILABLE" and orjson.loads(body)["status"] == "loading"
    assert [(r["path"], r["status"]) for r in lines] == [(EMBEDDINGS, 503), ("/ready", 503)]
    assert metric_counts(app) == Counter({(EMBEDDINGS, "POST", 503): 1, ("/ready", "GET", 503): 1})


def test_every_route_but_the_open_ones_needs_the_key(models_list, registry) -> None:
    """Derived from the app's own routes, so that a route added later is covered too. Open:
    the probes, the pages and their assets (zeroth/api/auth.py)."""
    app = keyed_app(models_list, registry)
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<path:model_id>", "tiny")
        # An asset that exists, so an open route answers 200 rather than 404.
        path = path.replace("swagger-ui/<path:name>", "swagger-ui/swagger-ui.css")
        path = path.replace("<path:name>", "playground.css")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            served.add(rule.rule)
            for headers in ({}, WRONG):
                environ = EnvironBuilder(path=path, method=method, headers=headers).get_environ()
                status_line, response_headers, body = call(app, environ)
                if is_open(path):
                    assert status_line.startswith("200"), (method, path)
                else:
                    assert status_line.startswith("401"), (method, path, headers)
                    assert check_error_shape(401, response_headers, body)["code"] == (
                        "invalid_api_key"
                    )
            environ = EnvironBuilder(path=path, method=method, headers=AUTH).get_environ()
            assert not call(app, environ)[0].startswith("401"), (method, path)
    assert OPEN_PATHS <= served and EMBEDDINGS in served


def test_flask_has_no_request_hooks(app) -> None:
    """The cross-cutting work lives in the middleware alone: a Flask hook would run for every
    route but POST /v1/embeddings, which is exactly the drift this design rules out."""
    assert isinstance(app.wsgi_app, RequestMiddleware)
    for hooks in (
        app.before_request_funcs,
        app.after_request_funcs,
        app.teardown_request_funcs,
        app.url_value_preprocessors,
    ):
        assert not any(hooks.values()), hooks
