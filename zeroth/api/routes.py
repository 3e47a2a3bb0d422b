"""The endpoints. POST /v1/embeddings runs validate -> tokenize -> pool -> encode, in order."""

from __future__ import annotations

import time

import orjson
from flask import Blueprint, Flask, Request, Response, current_app, g, request

from zeroth.api.encode import embeddings_body
from zeroth.api.errors import SERVER_ERROR, ApiError, bad_request
from zeroth.api.limits import check_total_tokens
from zeroth.api.metrics import Metrics
from zeroth.api.pool import output_dimensions, pool
from zeroth.api.request_log import Notes
from zeroth.api.schemas import parse_embedding_request, read_json
from zeroth.api.tokenize import tokenize
from zeroth.drain import draining
from zeroth.registry import ModelRegistry, NoModelGiven, ServedModel, UnknownModel

REGISTRY = "zeroth.registry"
METRICS = "zeroth.metrics"

api = Blueprint("zeroth", __name__)


def get_registry() -> ModelRegistry:
    return current_app.extensions[REGISTRY]


def set_registry(app: Flask, registry: ModelRegistry) -> None:
    """Swap in a (re)loaded registry; requests in flight keep the one they fetched."""
    app.extensions[REGISTRY] = registry


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _ready_registry(registry: ModelRegistry | None = None) -> ModelRegistry:
    if registry is None:
        registry = get_registry()
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
    """The whole embeddings request, Flask or not (zeroth/api/fast.py): the response body, or
    an ApiError / werkzeug HTTPException. `notes` collects what the log line reports."""
    req = parse_embedding_request(read_json(request), registry.limits.max_inputs)
    _ready_registry(registry)
    model = _model(registry, req.model)
    notes.req = req
    notes.model = model.alias
    dims = output_dimensions(req.dimensions, model)
    tokens = tokenize(req, model)
    notes.tokens = tokens.count
    check_total_tokens(tokens.count, registry.limits)
    vectors = pool(tokens.ids, model, dims)
    body = embeddings_body(vectors, req.encoding_format, model.alias, tokens.count)
    metrics.observe_embeddings(model.alias, len(tokens.ids), tokens.count)
    return body


@api.post("/v1/embeddings")
def embeddings() -> Response:
    # One registry for the whole request, even if a reload swaps it meanwhile.
    notes = g.zeroth_notes = Notes()
    body = embed(get_registry(), request, notes, current_app.extensions[METRICS])
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
    registry = get_registry()
    return _json({"object": "list", "data": [_model_object(m) for m in registry]})


@api.get("/v1/models/<path:model_id>")
def retrieve_model(model_id: str) -> Response:
    registry = get_registry()
    if model_id not in registry:
        raise ApiError(
            404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found"
        )
    return _json(_model_object(registry.get(model_id)))


@api.get("/health")
def health() -> Response:
    return _json({"status": "ok"})


@api.get("/ready")
def ready() -> Response:
    registry = get_registry()
    if not registry.ready:
        return _json({"status": "loading"}, 503)
    if draining():  # still serving, but going away: route new work elsewhere
        return _json({"status": "draining"}, 503)
    return _json({"status": "ready", "models": len(registry)})


@api.get("/metrics")
def metrics() -> Response:
    m: Metrics = current_app.extensions[METRICS]
    return Response(m.render(), mimetype=m.content_type)


def install(app: Flask, registry: ModelRegistry) -> None:
    """Routes, the registry and per-request metrics on `app`.

    Hooks added later with `app.before_request` (auth, limits: issue 5) run before every
    endpoint; raising `ApiError` there answers in OpenAI's error shape and is still measured.
    """
    metrics = Metrics()
    app.extensions[METRICS] = metrics
    set_registry(app, registry)
    app.register_blueprint(api)

    @app.before_request
    def _start_clock() -> None:
        g.zeroth_start = time.perf_counter()

    @app.after_request
    def _measure(response: Response) -> Response:
        start = g.get("zeroth_start")
        if start is not None:
            rule = request.url_rule
            endpoint = rule.rule if rule is not None else "unmatched"
            seconds = time.perf_counter() - start
            metrics.observe_request(endpoint, request.method, response.status_code, seconds)
        return response
