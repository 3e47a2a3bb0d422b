"""A lean reading of the common HTTP/1.1 request, for zeroth/gunicorn_worker.py.

gunicorn's pure-Python parser, environ and response objects cost ~0.3 ms of CPU a request;
the embeddings themselves cost about as much. Nearly every request our clients send (the `openai`
client, LangChain, curl with a small body, a load balancer's probes) is the simplest case HTTP
allows: GET or POST, a plain path, a handful of distinct headers, a small body of known length
that arrives with them. `parse_head` reads exactly that case and nothing else: anything it does
not fully understand returns None, and the worker hands the bytes, untouched, to gunicorn's own
parser. So gunicorn decides every hard case, including every request it would refuse: the lean
route never imitates gunicorn's error answers, it only takes requests gunicorn would accept and
answer exactly as it does. What goes to gunicorn:

- any header name that appears twice (gunicorn refuses a second Host, Content-Type or
  Content-Length, takes the first Connection and joins the rest);
- Transfer-Encoding, Expect, Upgrade, TE, Trailer, HTTP2-Settings, the forwarding and scheme
  headers gunicorn interprets, and names holding "_" (dropped or refused, per header_map);
- a request line or a field line longer than gunicorn allows, counted as gunicorn counts them
  (a field line's CRLF included), and more fields than it allows;
- a Content-Length that is not plain decimal without leading zeros, or over `Limits.body`;
- a method other than GET or POST, a target other than a path of unreserved characters (no
  query, no escapes, no absolute form), a version other than HTTP/1.1;
- any byte outside visible ASCII, space and tab in a field value, and a field name that is not
  an RFC 9110 token (whitespace before the colon, an empty name, obs-fold).
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
# gunicorn takes "007" as 7 and Python's int() fails past 4,300 digits: only the spelling every
# client uses, with few enough digits to be cheap, is read here.
_LENGTH = re.compile(rb"0|[1-9][0-9]{0,9}")
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
    # gunicorn's own limits as its parser applies them (a request line longer than
    # `request_line`, a field line longer than `field_size` with its CRLF, more than `fields`
    # fields are refused); the lean route takes only requests within them.
    request_line: int
    fields: int
    field_size: int
    # The largest Content-Length the lean route takes (larger bodies are gunicorn's to read).
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
    seen: set[bytes] = set()
    content_length = 0
    close = False
    for line in lines[1:]:
        if len(line) + 2 > limits.field_size:  # gunicorn counts the CRLF
            return None
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        lower = name.lower()
        # A repeated name is never ours: gunicorn refuses some repeats, takes the first of
        # others (Connection) and joins the rest, and a proxy in front may read it otherwise.
        if lower in seen or lower in _GUNICORN_HEADERS or lower in limits.gunicorn_headers:
            return None
        seen.add(lower)
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            return None
        text = value.decode("ascii")
        if lower == b"content-length":
            if not _LENGTH.fullmatch(value):
                return None
            content_length = int(value)
            environ["CONTENT_LENGTH"] = text
        elif lower == b"content-type":
            environ["CONTENT_TYPE"] = text
        else:
            if lower == b"connection":
                token = value.lower()
                if token == b"close":
                    close = True
                elif token != b"keep-alive":
                    return None
            environ["HTTP_" + name.decode("ascii").upper().replace("-", "_")] = text
    if content_length > limits.body or (parts[0] == b"POST" and b"content-length" not in seen):
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
