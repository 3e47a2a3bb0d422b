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
        b"Content-Length: 12\r\nAuthorization: Bearer k\r\nx-tag:  b \r\n"
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
    assert env["HTTP_X_TAG"] == "b"
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
        # Any repeated name: gunicorn refuses a second Host or Content-Type and takes the first
        # Connection, whatever the case of the name.
        POST + b"\r\nHost: h",
        POST + b"\r\nhost: other",
        POST + b"\r\nContent-Type: text/plain\r\ncontent-type: application/json",
        POST + b"\r\nConnection: keep-alive\r\nConnection: close",
        POST + b"\r\nX-Tag: a\r\nX-Tag: b",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 1e3",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: -1",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: +12",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 012",  # gunicorn: 12; a proxy: ?
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 1 2",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: " + b"1" * 4400,  # past int()'s limit
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 12345678901",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: \xb2",  # "2" in latin-1
        b"POST /v1/embeddings HTTP/1.1\r\nHost: h",  # POST without a length
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 99999999",  # over the body limit
        POST + b"\r\nX_Under: score",
        POST + b"\r\n folded: line",
        POST + b"\r\nX-A : b",
        POST + b"\r\n: empty-name",
        POST + b"\r\nX-A: a\rb",
        POST + b"\r\nX-A: a\nb",
        POST + b"\r\nX-A: a\x7f",
        POST + b"\r\nX-Bad: a\x01b",
        POST + b"\r\nX-Latin: caf\xe9",
        POST + b"\r\nNoColon",
        POST + b"\r\nX-Long: " + b"a" * 9000,
        b"POST /v1/embeddings HTTP/1.0\r\nContent-Length: 1",
        b"PUT /v1/embeddings HTTP/1.1\r\nContent-Length: 1",
        b"HEAD /ready HTTP/1.1",
        b"GET /v1/models?x=1 HTTP/1.1",
        b"GET /ready#x HTTP/1.1",
        b"GET * HTTP/1.1",
        b"get /ready HTTP/1.1",
        b"GET /ready HTTP/1.2",
        b"GET /ready HTTP/1.1 ",
        b"\r\nGET /ready HTTP/1.1",  # the empty line gunicorn skips
        b"GET /v1/models/a%2Fb HTTP/1.1",
        b"GET http://h/ready HTTP/1.1",
        b"GET  /ready HTTP/1.1",
        b"GET /" + b"a" * 5000 + b" HTTP/1.1",
    ],
)
def test_anything_else_is_left_to_gunicorn(head: bytes) -> None:
    assert parse_head(head, LIMITS) is None


def test_limits_are_counted_as_gunicorn_counts_them() -> None:
    # Request line: its length without the CRLF, at most the limit.
    line = b"GET /" + b"a" * (LIMITS.request_line - 14) + b" HTTP/1.1"
    assert len(line) == LIMITS.request_line
    assert parse_head(line, LIMITS) is not None
    assert parse_head(line.replace(b"/a", b"/aa"), LIMITS) is None
    # Field line: its length with the CRLF, at most the limit (gunicorn answers 431 to a
    # 8189-byte line under the default 8190).
    field = b"X-A: " + b"a" * (LIMITS.field_size - 7)
    assert len(field) + 2 == LIMITS.field_size
    assert parse_head(b"GET /ready HTTP/1.1\r\n" + field, LIMITS) is not None
    assert parse_head(b"GET /ready HTTP/1.1\r\n" + field + b"a", LIMITS) is None
    # Fields: at most the limit.
    fields = [b"X-%d: 1" % i for i in range(LIMITS.fields)]
    assert parse_head(b"\r\n".join([b"GET /ready HTTP/1.1", *fields]), LIMITS) is not None
    assert parse_head(b"\r\n".join([b"GET /ready HTTP/1.1", *fields, b"X-Z: 1"]), LIMITS) is None


def test_content_length_up_to_the_lean_body_limit() -> None:
    ok = b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: %d" % LIMITS.body
    assert parse_head(ok, LIMITS).content_length == LIMITS.body
    assert parse_head(ok + b"0", LIMITS) is None
    zero = parse_head(b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 0", LIMITS)
    assert zero is not None and zero.content_length == 0


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
