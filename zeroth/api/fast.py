"""POST /v1/embeddings without Flask's request machinery; everything else goes to Flask.

Flask spends ~0.2 ms a request on contexts, routing, the session, hooks and the response object
before and after our work; for a one-sentence request that is most of the server's time. This
WSGI middleware answers exactly what the Flask app would, in the same order: clock, request id,
API key, `routes.embed` (the very code the Flask view runs), then the X-Request-ID header, the
log line and the metrics. Errors are `error_response`'s bodies.

It steps aside (the request goes to Flask) whenever the app's hooks are not the ones it
reproduces, e.g. once a test or an extension registers another `before_request`.
tests/test_fastpath.py checks that both paths answer alike, for success and every error.
ZEROTH_FAST_PATH=0 turns it off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flask import Flask, Request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from zeroth.api.auth import AUTH, challenge
from zeroth.api.errors import ApiError, api_error_from_http, error_body, unexpected_error
from zeroth.api.request_log import REQUEST_LOG, Notes, request_id_from, write_line
from zeroth.api.request_log import log as request_logger
from zeroth.api.routes import METRICS, REGISTRY, embed
from zeroth.switches import switched_off

log = logging.getLogger("zeroth.api.errors")

PATH = "/v1/embeddings"
_JSON = ("Content-Type", "application/json")
StartResponse = Callable[..., object]


def _hooks(app: Flask) -> tuple:
    """The request hooks Flask would run, by identity (a copy, to compare against later)."""
    return tuple(
        {k: list(v) for k, v in funcs.items()}
        for funcs in (
            app.before_request_funcs,
            app.after_request_funcs,
            app.teardown_request_funcs,
            app.url_value_preprocessors,
        )
    ) + (list(app.teardown_appcontext_funcs),)


_STATUS_LINES: dict[int, str] = {}


def _status_line(status: int) -> str:
    """As werkzeug's Response writes it ("400 BAD REQUEST")."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = (
            f"{status} {HTTP_STATUS_CODES.get(status, 'unknown').upper()}"
        )
    return line


class EmbeddingsFastPath:
    def __init__(self, app: Flask, wsgi_app: Callable):
        self.app = app
        self.wsgi_app = wsgi_app
        self.hooks = _hooks(app)
        self.served = 0  # requests this path answered (tests check it is taken)

    def _flask_would_do_the_same(self) -> bool:
        app = self.app
        before, after, teardown, preprocessors, app_teardown = self.hooks
        return (
            app.before_request_funcs == before
            and app.after_request_funcs == after
            and app.teardown_request_funcs == teardown
            and app.url_value_preprocessors == preprocessors
            and app.teardown_appcontext_funcs == app_teardown
        )

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if (
            environ.get("PATH_INFO") != PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or not self._flask_would_do_the_same()
        ):
            return self.wsgi_app(environ, start_response)
        return self.serve(environ, start_response)

    def serve(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        start = time.perf_counter()
        extensions = self.app.extensions
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        notes = Notes()
        metrics = extensions[METRICS]
        headers: list[tuple[str, str]]
        request = Request(environ)
        request.max_content_length = self.app.config["MAX_CONTENT_LENGTH"]
        try:
            checker = extensions.get(AUTH)
            if checker is not None:
                challenge(checker, environ.get("HTTP_AUTHORIZATION"))
            body = embed(extensions[REGISTRY], request, notes, metrics)
            status = 200
            headers = [_JSON, ("Content-Length", str(len(body)))]
        except Exception as exc:
            if isinstance(exc, HTTPException):
                exc = api_error_from_http(exc, "POST", PATH, request.max_content_length)
            elif not isinstance(exc, ApiError):
                log.exception("unhandled error on %s %s", "POST", PATH)
                exc = unexpected_error()
            status = exc.status
            body = error_body(exc)
            headers = [_JSON, ("Content-Length", str(len(body))), *exc.headers.items()]
        headers.append(("X-Request-ID", request_id))
        settings = extensions[REQUEST_LOG]
        if settings.enabled and request_logger.isEnabledFor(logging.INFO):
            write_line(request_id, "POST", PATH, status, start, notes, settings.log_inputs)
        metrics.observe_request(PATH, "POST", status, time.perf_counter() - start)
        self.served += 1
        start_response(_status_line(status), headers)
        return [body]


def install_fast_path(app: Flask) -> None:
    """Put the lean path in front of the app's WSGI callable; call once all hooks are in."""
    if switched_off("ZEROTH_FAST_PATH"):
        return
    app.wsgi_app = EmbeddingsFastPath(app, app.wsgi_app)
