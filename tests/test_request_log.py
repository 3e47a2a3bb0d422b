"""One JSON line per request, the X-Request-ID header, and the served OpenAPI description."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from conftest import make_app

SECRET_TEXT = "the quick brown cat sat on the mat"


def test_one_line_per_request_without_the_text(client, lines) -> None:
    resp = client.post("/v1/embeddings", json={"input": [SECRET_TEXT, "hello"], "model": "tiny"})
    assert resp.status_code == 200
    (line,) = lines
    assert line["request_id"] == resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/embeddings", 200)
    assert (line["model"], line["inputs"]) == ("tiny", 2)
    assert line["tokens"] == resp.get_json()["usage"]["total_tokens"] == 11
    assert 0 < line["latency_ms"] < 10_000
    assert "cat" not in orjson.dumps(line).decode()


def test_errors_and_other_endpoints_are_logged_too(client, lines) -> None:
    client.post("/v1/embeddings", json={"input": "x", "model": "nope"})
    client.post("/v1/embeddings", data=b"{")
    client.get("/health")
    assert [(r["path"], r["status"], r["model"]) for r in lines] == [
        ("/v1/embeddings", 404, None),
        ("/v1/embeddings", 400, None),
        ("/health", 200, None),
    ]
    assert len({r["request_id"] for r in lines}) == 3


@pytest.mark.parametrize(
    "given, kept",
    [
        ("req-123_abc.DEF:9", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("tab\there", False),
        ("", False),
        ("naïve", False),
        ("line\r\nInjected: yes", False),
    ],
)
def test_request_id_is_echoed_only_when_short_and_printable(app, lines, given, kept) -> None:
    client = app.test_client()
    try:
        resp = client.get("/v1/models", headers={"X-Request-ID": given})
    except ValueError:  # werkzeug refuses to send a header with a newline at all
        assert "\n" in given
        return
    echoed = resp.headers["X-Request-ID"]
    assert (echoed == given) is kept
    assert lines[-1]["request_id"] == echoed
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_inputs_logged_only_when_asked(models_list: Path, lines) -> None:
    client = make_app(models_list, log_inputs=True).test_client()
    client.post("/v1/embeddings", json={"input": SECRET_TEXT})
    client.post("/v1/embeddings", json={"input": [[2, 3]]})
    assert [r["input"] for r in lines] == [[SECRET_TEXT], [[2, 3]]]


def test_request_log_can_be_switched_off(models_list: Path, lines) -> None:
    resp = make_app(models_list, request_log=False).test_client().get("/v1/models")
    assert lines == [] and resp.headers["X-Request-ID"]


def _spec_parameter(match: re.Match) -> str:
    # The spec calls the model route's parameter `model`, as OpenAI does.
    name = match.group(1)
    return "{model}" if name == "model_id" else f"{{{name}}}"


def test_openapi_describes_every_route(app, client) -> None:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    spec = resp.get_json()
    assert spec["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", _spec_parameter, rule.rule)
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert described == served
    # The request schema lists exactly the fields the validator accepts.
    from zeroth.api.schemas import ENCODING_FORMATS, FIELDS

    request = spec["components"]["schemas"]["EmbeddingRequest"]
    assert set(request["properties"]) == FIELDS
    assert tuple(request["properties"]["encoding_format"]["enum"]) == ENCODING_FORMATS
    # Every $ref resolves.
    text = resp.get_data(as_text=True)
    for ref in re.findall(r'"\$ref":"#/components/(\w+)/(\w+)"', text):
        assert ref[1] in spec["components"][ref[0]], ref
