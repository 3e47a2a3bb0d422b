"""A lean reading of the common HTTP/1.1 request, for zeroth/gunicorn_worker.py.

gunicorn's pure-Python parser, environ and response objects cost ~0.3 ms of CPU a request;
the embeddings themselves cost about as much. Nearly every request our clients send (the `openai`
client, LangChain, curl with a small body, a load balancer's probes) is the simplest case HTTP
allows: GET or POST, a plain path, a handful of headers, a body of known length that arrives
with them. `parse_head` reads exactly that case and nothing else: anything it does not fully
understand (chunked bodies, Expect, Upgrade, forwarding headers that gunicorn interprets, odd
characters, over-long lines, repeated or malformed Content-Length ...) returns None, and the
worker hands the bytes, untouched, to gunicorn's own parser. So gunicorn still decides every
hard case, and the lean route only ever sees requests whose meaning is unambiguous.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate

_METHODS = frozenset((b"GET", b"POST"))
# A path of unreserved characters only: no query, no percent-escapes, nothing to decode.
_PATH = re.compile(rb"/[A-Za-z0-9/._~-]*")
_TOKEN = re.compile(rb"[!#$%&'*+.^`|~0-9A-Za-z-]+")  # RFC 9110 token, minus "_" (see below)
# Field values: visible ASCII, space and tab (no controls, no obs-text).
_VALUE = re.compile(rb"[\t\x20-\x7e]*")
# Headers that change how the body is framed or the connection is used, or that gunicorn
# interprets itself; their requests go to gunicorn. (Names holding "_" go there too: gunicorn
# drops or refuses them, depending on its header_map setting.)
_GUNICORN_HEADERS = frozenset(
    (b"transfer-encoding", b"expect", b"upgrade", b"http2-settings", b"te", b"trailer")
)
# Hop-by-hop headers an application must not set; the server writes its own Connection.
_HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)


@dataclass(slots=True)
class LeanRequest:
    method: str
    path: str
    content_length: int
    close: bool  # the client asked for Connection: close
    environ: dict  # CONTENT_TYPE, CONTENT_LENGTH and HTTP_* keys, as gunicorn names them


@dataclass(frozen=True, slots=True)
class Limits:
    request_line: int
    fields: int
    field_size: int
    body: int
    # Lower-cased header names gunicorn gives meaning to (forwarding, secure scheme).
    gunicorn_headers: frozenset[bytes]


def parse_head(head: bytes, limits: Limits) -> LeanRequest | None:
    """The request whose head (without the blank line) is `head`, or None: gunicorn's case."""
    lines = head.split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > limits.request_line or len(lines) - 1 > limits.fields:
        return None
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in _METHODS:
        return None
    if not _PATH.fullmatch(parts[1]):
        return None
    environ: dict[str, str] = {}
    content_length = 0
    seen_length = close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or len(line) > limits.field_size or not _TOKEN.fullmatch(name):
            return None
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            return None
        lower = name.lower()
        if lower in _GUNICORN_HEADERS or lower in limits.gunicorn_headers:
            return None
        text = value.decode("ascii")
        if lower == b"content-length":
            if seen_length or not value.isdigit():
                return None
            seen_length = True
            content_length = int(value)
            environ["CONTENT_LENGTH"] = text
            continue
        if lower == b"content-type":
            environ["CONTENT_TYPE"] = text
            continue
        if lower == b"connection":
            token = value.lower()
            if token == b"close":
                close = True
            elif token != b"keep-alive":
                return None
        key = "HTTP_" + name.decode("ascii").upper().replace("-", "_")
        # Repeated fields are joined with commas, as gunicorn joins them.
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    if content_length > limits.body or (parts[0] == b"POST" and not seen_length):
        return None
    return LeanRequest(parts[0].decode(), parts[1].decode(), content_length, close, environ)


def wsgi_environ(
    base: dict, req: LeanRequest, body: bytes, server: tuple, client: tuple, sock: object
) -> dict:
    """The WSGI environ gunicorn's `wsgi.create` builds for the same request."""
    environ = dict(base)
    environ.update(req.environ)
    environ.update(
        {
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "gunicorn.socket": sock,
            "REQUEST_METHOD": req.method,
            "QUERY_STRING": "",
            "RAW_URI": req.path,
            "PATH_INFO": req.path,
            "SCRIPT_NAME": "",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": str(server[0]),
            "SERVER_PORT": str(server[1]),
            "REMOTE_ADDR": str(client[0]),
            "REMOTE_PORT": str(client[1]),
        }
    )
    return environ


class Responder:
    """start_response for one request, and the bytes of its whole response."""

    __slots__ = ("status", "headers")

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.status is not None:
            raise exc_info[1].with_traceback(exc_info[2])  # type: ignore[index]
        self.status, self.headers = status, headers
        return self._write_unsupported

    @staticmethod
    def _write_unsupported(data: bytes) -> None:
        raise NotImplementedError("the lean route takes the response as an iterable only")

    def response(self, chunks: Iterable[bytes], keep_alive: bool, date: str) -> tuple[bytes, bool]:
        """(the response's bytes, whether the connection stays open)."""
        body = b"".join(chunks)
        if self.status is None:
            raise RuntimeError("the application did not call start_response")
        lines = [f"HTTP/1.1 {self.status}\r\nServer: gunicorn\r\nDate: {date}\r\nConnection: "]
        extra = []
        has_length = False
        for name, value in self.headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                if lower == "connection" and value.lower() == "close":
                    keep_alive = False
                continue
            if lower == "content-length":
                has_length = True
            extra.append(f"{name}: {value}\r\n")
        if not has_length:
            extra.append(f"Content-Length: {len(body)}\r\n")
        lines.append("keep-alive\r\n" if keep_alive else "close\r\n")
        lines.extend(extra)
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + body, keep_alive


class HttpDate:
    """The Date header's value, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, formatdate(second, usegmt=True)
        return self.value
