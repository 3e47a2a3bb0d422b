"""The endpoints. POST /v1/embeddings runs validate -> tokenize -> pool -> encode, in order.

Request id, API key, log line and metrics are not here: zeroth/api/middleware.py does them once
for every route, and answers POST /v1/embeddings itself by calling `embed` below.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Request, Response, request

from zeroth.api.encode import embeddings_body
from zeroth.api.errors import SERVER_ERROR, ApiError, bad_request
from zeroth.api.limits import check_total_tokens
from zeroth.api.metrics import Metrics
from zeroth.api.pool import output_dimensions, pool
from zeroth.api.request_log import Notes
from zeroth.api.schemas import parse_embedding_request, read_json
from zeroth.api.state import state_of
from zeroth.api.tokenize import tokenize
from zeroth.drain import draining
from zeroth.registry import ModelRegistry, NoModelGiven, ServedModel, UnknownModel

EMBEDDINGS = "/v1/embeddings"

api = Blueprint("zeroth", __name__)


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _ready(registry: ModelRegistry) -> ModelRegistry:
    if not registry.ready:
        raise ApiError(
            503, "The models are still loading; retry shortly", type=SERVER_ERROR, code="not_ready"
        )
    return registry


def _model(registry: ModelRegistry, name: str | None) -> ServedModel:
    try:
        return registry.get(name)
    except NoModelGiven:
        raise bad_request("You must provide a model parameter", param="model") from None
    except UnknownModel:
        raise ApiError(
            404,
            f"The model `{name}` does not exist or you do not have access to it.",
            code="model_not_found",
        ) from None


def embed(registry: ModelRegistry, request: Request, notes: Notes, metrics: Metrics) -> bytes:
    """The whole embeddings request: the response body, or an ApiError / werkzeug
    HTTPException. `notes` collects what the log line reports."""
    req = parse_embedding_request(read_json(request), registry.limits.max_inputs)
    _ready(registry)
    model = _model(registry, req.model)
    notes.req = req
    notes.model = model.alias
    dims = output_dimensions(req.dimensions, model)
    tokens = tokenize(req, model)
    notes.tokens = tokens.count
    check_total_tokens(tokens.limited, registry.limits)
    vectors = pool(tokens.ids, model, dims)
    body = embeddings_body(vectors, req.encoding_format, model.alias, tokens.count)
    metrics.observe_embeddings(model.alias, len(tokens.ids), tokens.count)
    return body


@api.post(EMBEDDINGS)
def embeddings() -> Response:
    # The middleware answers this POST before Flask sees it; the rule is here so that Flask's
    # router knows the path (405 with Allow for other methods), and so that the app still
    # answers correctly if it is ever mounted without the middleware.
    state = state_of()
    body = embed(state.registry, request, Notes(), state.metrics)
    return Response(body, mimetype="application/json")


def _model_object(model: ServedModel) -> dict:
    return {
        "id": model.alias,
        "object": "model",
        "created": model.created,
        "owned_by": model.entry.owned_by,
    }


@api.get("/v1/models")
def list_models() -> Response:
    registry = state_of().registry
    return _json({"object": "list", "data": [_model_object(m) for m in registry]})


@api.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> Response:
    registry = state_of().registry
    if model_id not in registry:
        raise ApiError(
            404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found"
        )
    model = registry.get(model_id)
    # Beyond OpenAI's fields (clients ignore extras): which ids a token-id input is read as.
    return _json({**_model_object(model), "token_ids": model.token_ids})


@api.get("/health")
def health() -> Response:
    return _json({"status": "ok"})


@api.get("/ready")
def ready() -> Response:
    registry = state_of().registry
    if not registry.ready:
        return _json({"status": "loading"}, 503)
    if draining():  # still serving, but going away: route new work elsewhere
        return _json({"status": "draining"}, 503)
    return _json({"status": "ready", "models": len(registry)})


@api.get("/metrics")
def metrics() -> Response:
    m = state_of().metrics
    return Response(m.render(), mimetype=m.content_type)
