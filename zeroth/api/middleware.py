"""Every request's cross-cutting work, written once: clock, request id, API key, then the route,
then the X-Request-ID header, the log line and the metrics.

It wraps the Flask app as WSGI middleware and is the one way into it. The route is one of two:
POST /v1/embeddings is answered here by `routes.embed` without Flask's request machinery
(contexts, routing, the response object: ~0.2 ms a request, most of a one-sentence request's
time), and every other request goes to Flask. Either way the work around it is the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flask import Flask, Request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_path_info

from zeroth.api.auth import challenge, is_open
from zeroth.api.errors import ApiError, api_error_from_http, error_body, unexpected_error
from zeroth.api.request_log import Notes, request_id_from, write_line
from zeroth.api.request_log import log as request_logger
from zeroth.api.routes import EMBEDDINGS, embed
from zeroth.api.state import ServerState

log = logging.getLogger("zeroth.api.errors")

REQUEST_ID = "X-Request-ID"
UNMATCHED = "unmatched"
StartResponse = Callable[..., object]
_JSON = ("Content-Type", "application/json")
_STATUS_LINES: dict[int, str] = {}


def status_line(status: int) -> str:
    """As werkzeug writes it ("400 BAD REQUEST"), so both routes answer alike."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = (
            f"{status} {HTTP_STATUS_CODES.get(status, 'unknown').upper()}"
        )
    return line


class RequestMiddleware:
    def __init__(self, app: Flask, state: ServerState):
        self.flask = app.wsgi_app
        self.url_map = app.url_map
        self.state = state
        self.max_body = state.settings.max_body_bytes
        self.log_lines = state.settings.request_log
        self.log_inputs = state.settings.log_inputs

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        start = time.perf_counter()
        state = self.state
        method = environ.get("REQUEST_METHOD", "GET")
        # As werkzeug (so Flask's router) reads it: decoded, leading slashes merged.
        path = "/" + get_path_info(environ).lstrip("/")
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        notes = Notes()
        endpoint = EMBEDDINGS
        body: Iterable[bytes]
        try:
            if state.keys.enabled and not is_open(path):
                challenge(state.keys, environ.get("HTTP_AUTHORIZATION"))
            if path == EMBEDDINGS and method == "POST":
                status, headers, body = self._embeddings(environ, notes)
            else:
                endpoint = self._endpoint(environ)
                status, headers, body = self._flask(environ, start_response, request_id)
        except Exception as exc:  # an ApiError from the key check, or a failure of ours
            if path != EMBEDDINGS or method != "POST":
                endpoint = self._endpoint(environ)
            status, headers, body = self._error(exc, method, path)
        if headers is not None:  # None: Flask has already started the response
            headers.append((REQUEST_ID, request_id))
            start_response(status_line(status), headers)
        if self.log_lines and request_logger.isEnabledFor(logging.INFO):
            write_line(request_id, method, path, status, start, notes, self.log_inputs)
        state.metrics.observe_request(endpoint, method, status, time.perf_counter() - start)
        return body

    def _embeddings(self, environ: dict, notes: Notes) -> tuple[int, list, list[bytes]]:
        request = Request(environ)
        request.max_content_length = self.max_body
        try:
            body = embed(self.state.registry, request, notes, self.state.metrics)
        except HTTPException as exc:
            raise api_error_from_http(exc, "POST", EMBEDDINGS, self.max_body) from None
        return 200, [_JSON, ("Content-Length", str(len(body)))], [body]

    def _flask(
        self, environ: dict, start_response: StartResponse, request_id: str
    ) -> tuple[int, None, Iterable[bytes]]:
        answered: list[int] = []

        def start(status: str, headers: list, *exc_info: object) -> object:
            answered.append(int(status[:3]))
            headers.append((REQUEST_ID, request_id))
            return start_response(status, headers, *exc_info)

        body = self.flask(environ, start)
        # Flask has called start_response by now: its responses are never streamed.
        return answered[0], None, body

    def _error(self, exc: Exception, method: str, path: str) -> tuple[int, list, list[bytes]]:
        if isinstance(exc, HTTPException):
            exc = api_error_from_http(exc, method, path, self.max_body)
        elif not isinstance(exc, ApiError):
            log.exception("unhandled error on %s %s", method, path)
            exc = unexpected_error()
        body = error_body(exc)
        headers = [_JSON, ("Content-Length", str(len(body))), *exc.headers.items()]
        return exc.status, headers, [body]

    def _endpoint(self, environ: dict) -> str:
        """The route's rule for the metrics' label ("unmatched" when none), so that ids in paths
        do not make a label each."""
        try:
            rule, _ = self.url_map.bind_to_environ(environ).match(return_rule=True)
        except HTTPException:
            return UNMATCHED
        return rule.rule
