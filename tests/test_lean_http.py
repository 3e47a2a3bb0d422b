"""zeroth/lean_http.py: which requests the lean route takes, and what it makes of them."""

from __future__ import annotations

import pytest

from zeroth.lean_http import Limits, Responder, parse_head, wsgi_environ

LIMITS = Limits(
    request_line=4094,
    fields=100,
    field_size=8190,
    body=1 << 20,
    gunicorn_headers=frozenset((b"x-forwarded-proto", b"x-forwarded-for", b"forwarded")),
)
POST = b"POST /v1/embeddings HTTP/1.1\r\nHost: h\r\nContent-Length: 12"


def test_the_common_request_and_its_environ() -> None:
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: h:8000\r\nContent-Type: application/json\r\n"
        b"Content-Length: 12\r\nAuthorization: Bearer k\r\nX-Tag: a\r\nx-tag:  b \r\n"
        b"Connection: keep-alive"
    )
    req = parse_head(head, LIMITS)
    assert req is not None
    assert (req.method, req.path, req.content_length, req.close) == (
        "POST",
        "/v1/embeddings",
        12,
        False,
    )
    env = wsgi_environ({"base": 1}, req, b"x" * 12, ("127.0.0.1", 8000), ("10.0.0.1", 5), None)
    assert env["CONTENT_TYPE"] == "application/json" and env["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_AUTHORIZATION"] == "Bearer k"
    assert env["HTTP_X_TAG"] == "a,b"  # repeated fields joined, as gunicorn joins them
    assert env["HTTP_HOST"] == "h:8000"
    assert (env["REQUEST_METHOD"], env["PATH_INFO"], env["QUERY_STRING"]) == (
        "POST",
        "/v1/embeddings",
        "",
    )
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["SERVER_PORT"]) == ("10.0.0.1", "5", "8000")
    assert env["wsgi.input"].read() == b"x" * 12 and env["base"] == 1


def test_connection_close_and_get_without_a_body() -> None:
    assert parse_head(POST + b"\r\nConnection: close", LIMITS).close
    get = parse_head(b"GET /ready HTTP/1.1\r\nHost: h", LIMITS)
    assert get is not None and get.content_length == 0 and get.method == "GET"


@pytest.mark.parametrize(
    "head",
    [
        POST + b"\r\nTransfer-Encoding: chunked",
        POST + b"\r\nExpect: 100-continue",
        POST + b"\r\nUpgrade: h2c",
        POST + b"\r\nConnection: upgrade",
        POST + b"\r\nX-Forwarded-Proto: https",
        POST + b"\r\nForwarded: for=1.2.3.4",
        POST + b"\r\nContent-Length: 12",  # repeated
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 1e3",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: -1",
        b"POST /v1/embeddings HTTP/1.1\r\nHost: h",  # POST without a length
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 99999999",  # over the body limit
        POST + b"\r\nX_Under: score",
        POST + b"\r\n folded: line",
        POST + b"\r\nX-Bad: a\x01b",
        POST + b"\r\nX-Latin: caf\xe9",
        POST + b"\r\nNoColon",
        POST + b"\r\nX-Long: " + b"a" * 9000,
        b"POST /v1/embeddings HTTP/1.0\r\nContent-Length: 1",
        b"PUT /v1/embeddings HTTP/1.1\r\nContent-Length: 1",
        b"HEAD /ready HTTP/1.1",
        b"GET /v1/models?x=1 HTTP/1.1",
        b"GET /v1/models/a%2Fb HTTP/1.1",
        b"GET http://h/ready HTTP/1.1",
        b"GET  /ready HTTP/1.1",
        b"GET /" + b"a" * 5000 + b" HTTP/1.1",
    ],
)
def test_anything_else_is_left_to_gunicorn(head: bytes) -> None:
    assert parse_head(head, LIMITS) is None


def test_too_many_fields_go_to_gunicorn() -> None:
    head = b"GET /ready HTTP/1.1" + b"".join(b"\r\nX-%d: 1" % i for i in range(101))
    assert parse_head(head, LIMITS) is None


def test_the_response_bytes() -> None:
    r = Responder()
    r.start_response("200 OK", [("Content-Type", "application/json"), ("Keep-Alive", "x")])
    data, keep = r.response([b"{", b"}"], True, "Mon, 23 Nov 2026 10:00:00 GMT")
    assert keep
    assert data == (
        b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n"
        b"Connection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"\r\n{}"
    )
    r = Responder()
    r.start_response("400 BAD REQUEST", [("Content-Length", "0"), ("Connection", "close")])
    data, keep = r.response([], True, "d")
    assert not keep
    assert data.startswith(b"HTTP/1.1 400 BAD REQUEST\r\n") and b"Connection: close\r\n" in data
    assert data.count(b"Content-Length") == 1
