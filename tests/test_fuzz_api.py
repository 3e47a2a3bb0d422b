"""Hostile input, generated: whatever arrives, the answer is JSON, never a 5xx, and the
server still answers a valid request correctly afterwards.

Runs through Flask's test client against the tiny checkpoints of conftest.py, with API keys
on so that the key gate is fuzzed too. Examples are capped to keep the file at ~10-20 s.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import orjson
import pytest
from conftest import make_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "sk-fuzz-ключ"
AUTH = {"Authorization": "Bearer " + KEY.encode().decode("latin-1")}
VALID = {"model": "tiny", "input": ["the cat sat", "hello world"]}
MODELS = ["tiny", "tiny-tiktoken", "tiny8", "tiny-truncate", "tiny-max", "nope", ""]
FIELDS = ["input", "model", "encoding_format", "dimensions", "user"]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# JSON values of every kind: huge and negative integers, non-finite-free floats, strings with
# control characters and lone surrogates (written as \ud800 escapes), nesting.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, categories=None), max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
token_ids = st.integers(min_value=-(2**64), max_value=2**64) | st.integers(-3, 60)


@pytest.fixture(scope="module")
def fuzz_app(models_list):
    app = make_app(models_list, api_keys=(KEY,), max_body_bytes=11 * 1024 * 1024)
    app.config["TESTING"] = True
    return app


@pytest.fixture(scope="module")
def reference(fuzz_app):
    resp = fuzz_app.test_client().post("/v1/embeddings", json=VALID, headers=AUTH)
    assert resp.status_code == 200
    return resp.get_json()["data"]


def _dump(value: object) -> bytes:
    # json, not orjson: it writes lone surrogates as escapes, which is what hostile clients do.
    return json.dumps(value).encode()


def check(resp, allow_ok: bool = True) -> dict:
    """The invariant: JSON in OpenAI's shape and never 5xx; 200 only where input can be valid."""
    assert resp.status_code < 500, resp.get_data()[:300]
    assert resp.mimetype == "application/json", resp.get_data()[:300]
    body = orjson.loads(resp.get_data())
    if resp.status_code >= 400:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    else:
        assert allow_ok, body
        assert resp.status_code == 200
        for i, row in enumerate(body["data"]):
            assert row["index"] == i
            emb = row["embedding"]
            if isinstance(emb, str):
                vec = np.frombuffer(base64.b64decode(emb, validate=True), dtype="<f4")
            else:
                vec = np.asarray(emb, dtype=np.float64)
            assert np.isfinite(vec).all()
    assert resp.headers["X-Request-ID"]
    return body


def still_serves(app, reference) -> None:
    resp = app.test_client().post("/v1/embeddings", json=VALID, headers=AUTH)
    assert resp.status_code == 200
    assert resp.get_json()["data"] == reference


@FUZZ
@given(body=st.binary(max_size=3000))
def test_random_bytes(fuzz_app, reference, body) -> None:
    client = fuzz_app.test_client()
    check(client.post("/v1/embeddings", data=body, content_type="application/json", headers=AUTH))


@FUZZ
@given(value=json_values)
def test_any_json_document(fuzz_app, value) -> None:
    client = fuzz_app.test_client()
    resp = client.post(
        "/v1/embeddings", data=_dump(value), content_type="application/json", headers=AUTH
    )
    check(resp, allow_ok=isinstance(value, dict) and "input" in value)


@FUZZ
@given(field=st.sampled_from(FIELDS), value=json_values, model=st.sampled_from(MODELS))
def test_one_field_wrong(fuzz_app, field, value, model) -> None:
    body = {"model": model, "input": "the cat", field: value}
    client = fuzz_app.test_client()
    check(
        client.post(
            "/v1/embeddings", data=_dump(body), content_type="application/json", headers=AUTH
        )
    )


@FUZZ
@given(
    ids=st.lists(token_ids, min_size=0, max_size=20)
    | st.lists(st.lists(token_ids, max_size=10), max_size=5),
    model=st.sampled_from(MODELS),
    dims=st.none() | st.integers(-5, 40),
)
def test_token_id_arrays(fuzz_app, ids, model, dims) -> None:
    body = {"model": model, "input": ids, "dimensions": dims}
    client = fuzz_app.test_client()
    check(
        client.post(
            "/v1/embeddings", data=_dump(body), content_type="application/json", headers=AUTH
        )
    )


@FUZZ
@given(
    texts=st.lists(st.text(st.characters(codec="utf-8"), min_size=0, max_size=60), max_size=8),
    fmt=st.sampled_from(["float", "base64", "FLOAT", "", "binary"]),
)
def test_texts_with_control_characters(fuzz_app, texts, fmt) -> None:
    body = {"model": "tiny", "input": texts, "encoding_format": fmt}
    client = fuzz_app.test_client()
    check(
        client.post(
            "/v1/embeddings", data=_dump(body), content_type="application/json", headers=AUTH
        )
    )


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)


@FUZZ
@given(
    auth=st.none() | header_text | header_text.map(lambda t: "Bearer " + t),
    request_id=st.none() | header_text,
    content_type=st.none() | header_text,
    path=st.sampled_from(["/v1/embeddings", "/v1/models", "/metrics", "/admin/reload", "/x"]),
)
def test_headers(fuzz_app, auth, request_id, content_type, path) -> None:
    headers = {"Authorization": auth, "X-Request-ID": request_id, "Content-Type": content_type}
    headers = {k: v for k, v in headers.items() if v is not None}
    client = fuzz_app.test_client()
    resp = client.post(path, data=_dump(VALID), headers=headers)
    assert resp.status_code < 500
    if path != "/metrics" or resp.status_code != 200:
        check(resp)
    if auth is None or KEY not in auth:
        assert resp.status_code == 401


# Hand-picked hostile bodies the generators above reach rarely or never.
DEEP = 100_000
HOSTILE = {
    "deep list": b"[" * DEEP + b"]" * DEEP,
    "deep object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep input": b'{"input":' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}",
    "deep dimensions": b'{"input":"cat","dimensions":' + b"[" * 1000 + b"]" * 1000 + b"}",
    "deep encoding_format": b'{"input":"cat","encoding_format":' + b"[" * 600 + b"]" * 600 + b"}",
    "invalid utf-8 in a string": b'{"input": "caf\xe9"}',
    "overlong utf-8": b'{"input": "\xc0\xaf"}',
    "lone surrogate escape": b'{"input": ["ok", "\\udc80"]}',
    "nul and controls": b'{"input": "\\u0000\\u0001\\u001f\\u007f"}',
    "raw control in string": b'{"input": "a\x01b"}',
    "huge integer": b'{"input": [' + b"9" * 5000 + b"]}",
    "huge dimensions": b'{"input": "cat", "dimensions": 1e308}',
    "infinity": b'{"input": "cat", "dimensions": Infinity}',
    "nan": b'{"input": [NaN]}',
    "int64 overflow id": b'{"input": [18446744073709551616]}',
    "negative id": b'{"input": [[-1]]}',
    "id past vocab": b'{"input": [[2, 3, 99999]]}',
    "tiktoken id past vocab": b'{"model": "tiny-tiktoken", "input": [[999999]]}',
    "bool ids": b'{"input": [true, false]}',
    "float ids": b'{"input": [1.0, 2.0]}',
    "duplicate keys": b'{"input": "cat", "input": 5}',
    "bom": b'\xef\xbb\xbf{"input": "cat"}',
    "utf-16": '{"input": "cat"}'.encode("utf-16"),
    "trailing garbage": b'{"input": "cat"} x',
    "empty": b"",
    "whitespace": b" \n\t ",
    "10 MB of garbage": b"\x00\xff" * (5 * 1024 * 1024),
    "10 MB of one string": b'{"input": "' + b"cat " * (2_500_000) + b'"}',
    "10 MB of inputs": b'{"input": [' + b'"cat",' * 1_747_000 + b'"cat"]}',
    "10 MB of ids": b'{"input": [' + b"3," * 5_000_000 + b"3]}",
    "11 MB+ (over the limit)": b'{"input": "' + b"x" * (12 * 1024 * 1024) + b'"}',
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_bodies_are_4xx(fuzz_app, reference, body: bytes) -> None:
    client = fuzz_app.test_client()
    resp = client.post("/v1/embeddings", data=body, content_type="application/json", headers=AUTH)
    check(resp, allow_ok=body.startswith(b'{"input": "\\u0000'))
    still_serves(fuzz_app, reference)


def test_still_serves_after_the_fuzzing(fuzz_app, reference) -> None:
    still_serves(fuzz_app, reference)
    norms = [math.hypot(*row["embedding"]) for row in reference]
    assert norms == pytest.approx([1.0, 1.0], abs=1e-5)
