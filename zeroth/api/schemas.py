"""Step 1, validate: the raw request body becomes an `EmbeddingRequest` or a 4xx `ApiError`.

Written by hand rather than with pydantic so that token-id arrays are checked with C-level
iteration (`set(map(type, ...))`) and every message names the field as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Literal

import orjson
from flask import Request

from zeroth.api.errors import ApiError, bad_request

MAX_INPUTS = 2048
FIELDS = frozenset({"input", "model", "encoding_format", "dimensions", "user"})
ENCODING_FORMATS = ("float", "base64")
INPUT_TYPES = (
    "'input' must be a non-empty string, an array of non-empty strings, an array of "
    "integers (token ids) or an array of non-empty arrays of integers"
)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str | None
    # Exactly one of texts / ids is set.
    texts: list[str] | None
    ids: list[list[int]] | None
    encoding_format: Literal["float", "base64"]
    dimensions: int | None
    user: str | None

    @property
    def n_inputs(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.ids or ())


def read_json(request: Request) -> object:
    """The parsed body; 415 unless it is declared JSON (or not declared at all), 400 if invalid."""
    mimetype = request.mimetype
    # Clients that send no Content-Type at all get the benefit of the doubt.
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(
            415,
            f"Unsupported Content-Type {mimetype!r}: send the body as application/json",
            code="unsupported_media_type",
        )
    body = _read_body(request)
    if not body:
        raise bad_request("The request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None


def _read_body(request: Request) -> bytes:
    limit = request.max_content_length
    if request.content_length is not None or limit is None:
        return request.get_data(cache=False)  # werkzeug answers 413 past the declared length
    # A chunked body has no declared length, and werkzeug would silently cut it at the limit.
    body = request.environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise ApiError(
            413,
            f"Request body is larger than the limit of {limit} bytes (ZEROTH_MAX_BODY_BYTES)",
            code="request_too_large",
        )
    return body


def parse_embedding_request(payload: object, max_inputs: int = MAX_INPUTS) -> EmbeddingRequest:
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object")
    unknown = payload.keys() - FIELDS
    if unknown:
        # OpenAI rejects unknown parameters rather than silently ignoring them.
        name = sorted(unknown)[0]
        raise bad_request(f"Unrecognized request argument supplied: {name}", param=name)
    if "input" not in payload or payload["input"] is None:
        raise bad_request("Missing required parameter: 'input'", param="input")
    texts, ids = _parse_input(payload["input"], max_inputs)
    return EmbeddingRequest(
        model=_optional_str(payload, "model"),
        texts=texts,
        ids=ids,
        encoding_format=_encoding_format(payload.get("encoding_format")),
        dimensions=_dimensions(payload.get("dimensions")),
        user=_optional_str(payload, "user"),
    )


def _optional_str(payload: dict, key: str) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{key}' must be a string", param=key)
    return value


def _encoding_format(value: object) -> Literal["float", "base64"]:
    if value is None:
        return "float"
    if value not in ENCODING_FORMATS:
        raise bad_request(
            f"'encoding_format' must be 'float' or 'base64', got {_show(value)}",
            param="encoding_format",
        )
    return value  # type: ignore[return-value]


def _dimensions(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise bad_request(
            f"'dimensions' must be a positive integer, got {_show(value)}", param="dimensions"
        )
    return value


def _parse_input(
    value: object, max_inputs: int = MAX_INPUTS
) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(value, str):
        if not value:
            raise bad_request("'input' must not be an empty string", param="input")
        return [value], None
    if not isinstance(value, list):
        raise bad_request(f"{INPUT_TYPES}; got {_kind(value)}", param="input")
    if not value:
        raise bad_request("'input' must not be an empty array", param="input")
    kinds = set(map(type, value))
    if kinds == {int}:
        # One input given as token ids: its length is bounded by max_tokens, not MAX_INPUTS.
        return None, [value]
    if len(value) > max_inputs:
        raise bad_request(
            f"'input' has {len(value)} items; at most {max_inputs} are allowed (limits.max_inputs)",
            param="input",
        )
    if kinds == {str}:
        if "" in value:
            raise bad_request(
                f"'input[{value.index('')}]' must not be an empty string", param="input"
            )
        return value, None
    if kinds == {list}:
        if not min(map(len, value)):
            empty = next(i for i, row in enumerate(value) if not row)
            raise bad_request(f"'input[{empty}]' must not be an empty array", param="input")
        if set(map(type, chain.from_iterable(value))) != {int}:
            bad = next(i for i, row in enumerate(value) if set(map(type, row)) != {int})
            raise bad_request(
                f"'input[{bad}]' must be an array of integers (token ids)", param="input"
            )
        return None, value
    shown = ", ".join(sorted(_kind_name(k) for k in kinds))
    raise bad_request(f"{INPUT_TYPES}; got an array mixing {shown}", param="input")


def _kind_name(kind: type) -> str:
    return {
        str: "strings",
        int: "integers",
        float: "numbers",
        bool: "booleans",
        list: "arrays",
        dict: "objects",
        type(None): "nulls",
    }.get(kind, kind.__name__)


def _kind(value: object) -> str:
    return {
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
        return _kind(value)
    return text if len(text) <= 40 else text[:37] + "..."
