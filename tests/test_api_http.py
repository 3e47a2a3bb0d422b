"""The HTTP envelope: content types, body limits, routes, errors, readiness, metrics."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import orjson
import pytest
from conftest import make_app
from test_api_embeddings import assert_error

from zeroth.api.app import create_app
from zeroth.api.state import state_of
from zeroth.models_list import load_models_list
from zeroth.registry import ModelRegistry
from zeroth.settings import Settings

VALID = orjson.dumps({"model": "tiny", "input": "the cat"})


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.api+json",
        None,
    ],
)
def test_json_content_types_are_accepted(client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    assert client.post("/v1/embeddings", data=VALID, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_non_json_content_type_is_415(client, content_type: str) -> None:
    resp = client.post("/v1/embeddings", data=VALID, headers={"Content-Type": content_type})
    assert_error(resp, 415, None, "unsupported_media_type")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b'{"input": "cat",}',
        b"\xff\xfe\x00",
        b'{"input": "\xc3\x28"}',
        b"[1]",
        b'"cat"',
        b"null",
        b'{"input": "\\ud800"}',
        b"{" * 10000,
        b'{"input": [' + b"1" * 30 + b"]}",
    ],
)
def test_malformed_bodies_are_400(client, body: bytes) -> None:
    resp = client.post("/v1/embeddings", data=body, content_type="application/json")
    assert resp.status_code == 400, resp.data
    assert resp.get_json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_is_413(models_list: Path) -> None:
    small = make_app(models_list, max_body_bytes=1000).test_client()
    big = orjson.dumps({"model": "tiny", "input": ["cat dog"] * 500})
    msg = assert_error(
        small.post("/v1/embeddings", data=big, content_type="application/json"),
        413,
        None,
        "request_too_large",
    )
    assert "1000" in msg
    assert (
        small.post("/v1/embeddings", data=VALID, content_type="application/json").status_code == 200
    )


def test_unknown_route_and_wrong_method(client) -> None:
    msg = assert_error(client.post("/v1/completions", json={}), 404)
    assert msg == "Invalid URL (POST /v1/completions)"
    resp = client.get("/v1/embeddings")
    assert_error(resp, 405, None, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    assert_error(client.delete("/v1/models"), 405, None, "method_not_allowed")


def test_unexpected_failure_is_a_clean_500(client, app, caplog, monkeypatch) -> None:
    embedder = state_of(app).registry.get("tiny").embedder

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(embedder, "embed_ids", broken)
    with caplog.at_level(logging.ERROR):
        resp = client.post("/v1/embeddings", json={"model": "tiny", "input": "cat"})
    msg = assert_error(resp, 500)
    assert "secret" not in resp.get_data(as_text=True)
    assert "Traceback" not in resp.get_data(as_text=True) and "secret" not in msg
    assert any(
        r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records
    )


def test_models_endpoints(client, models_list: Path) -> None:
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == list(load_models_list(models_list).models)
    for m in body["data"]:
        assert set(m) == {"id", "object", "created", "owned_by"}
        assert m["object"] == "model" and isinstance(m["created"], int)
    one = client.get("/v1/models/org/tiny-slash").get_json()
    assert one["id"] == "org/tiny-slash" and one["object"] == "model"
    assert_error(client.get("/v1/models/gpt-4"), 404, "model", "model_not_found")


def test_health_and_ready(client, models_list: Path) -> None:
    assert client.get("/health").get_json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    app = create_app(Settings(models_list=models_list), load=False)
    cold = app.test_client()
    assert cold.get("/health").status_code == 200
    assert cold.get("/ready").status_code == 503
    assert_error(cold.post("/v1/embeddings", json={"input": "cat"}), 503, None, "not_ready")
    assert cold.get("/v1/models").get_json() == {"object": "list", "data": []}
    # What a reload does: the holder's registry swapped in one assignment.
    state_of(app).holder.registry = ModelRegistry.load(load_models_list(models_list))
    assert cold.get("/ready").status_code == 200
    assert cold.post("/v1/embeddings", json={"input": "cat"}).status_code == 200


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics(models_list: Path) -> None:
    client = make_app(models_list).test_client()
    client.post("/v1/embeddings", json={"model": "tiny", "input": ["the cat", "dog"]})
    client.post("/v1/embeddings", json={"model": "tiny", "input": ""})
    client.get("/nowhere")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    ok = dict(endpoint="/v1/embeddings", method="POST", status="200")
    assert _sample(text, "zeroth_requests_total", **ok) == 1
    assert _sample(text, "zeroth_requests_total", status="400") == 1
    assert _sample(text, "zeroth_request_errors_total", status="404") == 1
    assert _sample(text, "zeroth_embedding_tokens_total", model="tiny") == 5  # 2 BOS + 3 words
    assert _sample(text, "zeroth_embedding_inputs_per_request_count", model="tiny") == 1
    assert _sample(text, "zeroth_embedding_inputs_per_request_bucket", model="tiny", le="2.0") == 1
    assert _sample(text, "zeroth_request_duration_seconds_count", endpoint="/v1/embeddings") == 2
    # Unmatched paths share one label, so scanners cannot blow up the series count.
    assert not re.search(r'endpoint="/nowhere"', text)
    assert _sample(text, "zeroth_requests_total", endpoint="unmatched", status="404") == 1


def test_refusals_before_any_route_are_answered_and_measured(models_list: Path) -> None:
    """The key check runs before the route: its 401 is still in OpenAI's shape, and counted
    under the route it refused (or "unmatched"), like any other answer."""
    client = make_app(models_list, api_keys=("sk-metrics",)).test_client()
    assert_error(client.post("/v1/embeddings", json={"input": "x"}), 401, None, "invalid_api_key")
    assert_error(client.get("/v1/models/tiny"), 401, None, "invalid_api_key")
    assert_error(client.get("/nowhere"), 401, None, "invalid_api_key")
    resp = client.get("/metrics", headers={"Authorization": "Bearer sk-metrics"})
    text = resp.get_data(as_text=True)
    assert _sample(text, "zeroth_requests_total", endpoint="/v1/embeddings", status="401") == 1
    rule = "/v1/models/<path:model_id>"
    assert _sample(text, "zeroth_requests_total", endpoint=rule, status="401") == 1
    assert _sample(text, "zeroth_requests_total", endpoint="unmatched", status="401") == 1


def test_metrics_dir_is_the_settings_not_the_environment(models_list: Path, tmp_path) -> None:
    """With metrics_dir set, /metrics merges that folder (where gunicorn's workers write), so
    this process's own counters do not show; without, they do. PROMETHEUS_MULTIPROC_DIR in the
    environment is only for prometheus_client itself."""
    merged = make_app(models_list, metrics_dir=tmp_path).test_client()
    merged.get("/health")
    assert _sample(merged.get("/metrics").get_data(as_text=True), "zeroth_requests_total") == 0
    own = make_app(models_list).test_client()
    own.get("/health")
    text = own.get("/metrics").get_data(as_text=True)
    assert _sample(text, "zeroth_requests_total", endpoint="/health", status="200") == 1
