"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, never HTML."""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    """Raise anywhere in a request (hooks included) to answer with this error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def error_body(err: ApiError) -> bytes:
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


def error_response(err: ApiError) -> Response:
    resp = Response(error_body(err), status=err.status, mimetype="application/json")
    resp.headers.update(err.headers)
    return resp


def unexpected_error() -> ApiError:
    """What any unexpected exception becomes (logged with its traceback, never shown)."""
    return ApiError(
        500, "The server had an error while processing your request.", type=SERVER_ERROR
    )


# werkzeug's exceptions, re-worded and given OpenAI codes.
_HTTP_CODES = {
    404: None,
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def api_error_from_http(
    exc: HTTPException, method: str, path: str, max_content_length: int | None
) -> ApiError:
    status = exc.code or 500
    if status == 404:
        message = f"Invalid URL ({method} {path})"
    elif status == 405:
        message = f"Method {method} is not allowed for {path}"
    elif status == 413:
        message = (
            f"Request body is larger than the limit of {max_content_length} bytes "
            "(ZEROTH_MAX_BODY_BYTES)"
        )
    else:
        message = exc.description or exc.name
    headers = {}
    if status == 405:
        # Keep the Allow header that werkzeug computed from the routes.
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
    kind = SERVER_ERROR if status >= 500 else INVALID_REQUEST
    return ApiError(status, message, type=kind, code=_HTTP_CODES.get(status), headers=headers)


def _from_http(exc: HTTPException) -> ApiError:
    return api_error_from_http(exc, request.method, request.path, request.max_content_length)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(_from_http(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(unexpected_error())
