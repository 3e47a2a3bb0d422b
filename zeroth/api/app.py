"""create_app(settings): the Flask app, its state and the middleware every request goes through."""

from __future__ import annotations

from flask import Flask

from zeroth.api import request_log
from zeroth.api.admin import admin
from zeroth.api.errors import register_error_handlers
from zeroth.api.metrics import Metrics
from zeroth.api.middleware import RequestMiddleware
from zeroth.api.openapi import docs
from zeroth.api.pages import pages
from zeroth.api.routes import api
from zeroth.api.state import STATE, ServerState
from zeroth.auth import KeyChecker, load_keys
from zeroth.models_list import load_models_list
from zeroth.registry import ModelRegistry, RegistryHolder
from zeroth.reload import Reloader
from zeroth.settings import Settings
from zeroth.tiktoken_ids import use_cache_dir


def create_app(
    settings: Settings | None = None,
    *,
    registry: ModelRegistry | None = None,
    load: bool = True,
) -> Flask:
    """The app for `settings` (defaults: `Settings()`, no environment read here). `registry`
    injects a ready-made one; `load=False` starts with none (/ready answers 503) until a
    reload installs one."""
    settings = settings or Settings()
    # Keys first: a missing key file must stop the server before seconds of model loading.
    keys = KeyChecker(load_keys(settings.api_keys, settings.api_keys_file))
    if settings.tiktoken_cache_dir is not None:
        use_cache_dir(settings.tiktoken_cache_dir)
    if registry is None:
        registry = (
            ModelRegistry.load(load_models_list(settings.models_list))
            if load
            else ModelRegistry.empty()
        )
    holder = RegistryHolder(registry)
    state = ServerState(
        settings=settings,
        holder=holder,
        reloader=Reloader(settings.models_list, holder),
        metrics=Metrics(settings.metrics_dir),
        keys=keys,
    )
    app = Flask("zeroth")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions[STATE] = state
    register_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(admin)
    app.register_blueprint(docs)
    app.register_blueprint(pages)
    request_log.configure(settings.request_log)
    app.wsgi_app = RequestMiddleware(app, state)
    return app
