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


def error_response(err: ApiError) -> Response:
    body = {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }
    resp = Response(orjson.dumps(body), status=err.status, mimetype="application/json")
    resp.headers.update(err.headers)
    return resp


# werkzeug's exceptions, re-worded and given OpenAI codes.
_HTTP_CODES = {
    404: None,
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _from_http(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    if status == 404:
        message = f"Invalid URL ({request.method} {request.path})"
    elif status == 405:
        message = f"Method {request.method} is not allowed for {request.path}"
    elif status == 413:
        limit = request.max_content_length
        message = f"Request body is larger than the limit of {limit} bytes (ZEROTH_MAX_BODY_BYTES)"
    else:
        message = exc.description or exc.name
    headers = {}
    if status == 405:
        # Keep the Allow header that werkzeug computed from the routes.
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
    kind = SERVER_ERROR if status >= 500 else INVALID_REQUEST
    return ApiError(status, message, type=kind, code=_HTTP_CODES.get(status), headers=headers)


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
        return error_response(
            ApiError(
                500, "The server had an error while processing your request.", type=SERVER_ERROR
            )
        )
