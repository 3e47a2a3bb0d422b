"""Zeroth's OpenAI-compatible embeddings server.

Development:  python server.py [--models-list models_list.yaml] [--host 127.0.0.1] [--port 5000]
Production:   gunicorn -c gunicorn.conf.py server:app     (models list from $MODELS_LIST)

`app` is built on first access, so importing this module (tests, tools) loads no model.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from flask import Flask

from zeroth.api.admin import AUTH_ENABLED, admin
from zeroth.api.auth import install_auth
from zeroth.api.errors import register_error_handlers
from zeroth.api.fast import install_fast_path
from zeroth.api.openapi import docs
from zeroth.api.pages import pages
from zeroth.api.request_log import install_request_log
from zeroth.api.routes import install
from zeroth.auth import KeyChecker, load_keys
from zeroth.config import ConfigError, load_models_list
from zeroth.registry import ModelRegistry
from zeroth.reload import MODELS_LIST, install_sighup

DEFAULT_MODELS_LIST = "models_list.yaml"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


def models_list_path(explicit: str | os.PathLike | None = None) -> Path:
    """--models-list, else $MODELS_LIST, else ./models_list.yaml."""
    return Path(explicit or os.environ.get("MODELS_LIST") or DEFAULT_MODELS_LIST)


def create_app(
    models_list: str | os.PathLike | None = None,
    *,
    load: bool = True,
    registry: ModelRegistry | None = None,
    max_body_bytes: int | None = None,
    api_keys: list[bytes] | None = None,
) -> Flask:
    """The Flask app. `load=False` starts with no models (/ready answers 503) until
    `zeroth.api.routes.set_registry` installs some; `registry` injects a ready-made one.
    `api_keys` default: $ZEROTH_API_KEYS and $ZEROTH_API_KEYS_FILE (none: the API is open)."""
    # Keys first: a missing key file must stop the server before seconds of model loading.
    checker = KeyChecker(load_keys() if api_keys is None else api_keys)
    app = Flask("zeroth")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes or int(
        os.environ.get("ZEROTH_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    )
    path = models_list_path(models_list)
    app.config[MODELS_LIST] = path
    app.config[AUTH_ENABLED] = checker.enabled
    if registry is None:
        registry = ModelRegistry.load(load_models_list(path)) if load else ModelRegistry.empty()
    register_error_handlers(app)
    install(app, registry)
    # Hooks run in this order, after install's clock: a refused request still gets an id,
    # a log line and its metrics.
    install_request_log(app)
    install_auth(app, checker)
    app.register_blueprint(admin)
    app.register_blueprint(docs)
    app.register_blueprint(pages)
    # Last: it snapshots the hooks above, and steps aside if others are added later.
    install_fast_path(app)
    return app


def __getattr__(name: str) -> Flask:
    # `gunicorn server:app` reads this attribute; building it lazily keeps imports cheap.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        application = create_app()
    except ConfigError as exc:
        raise SystemExit(f"zeroth: {exc}") from None
    globals()["app"] = application
    return application


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Zeroth embeddings server (development)")
    parser.add_argument("--models-list", help="models_list.yaml (default: $MODELS_LIST or ./)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        application = create_app(args.models_list)
    except ConfigError as exc:
        parser.exit(1, f"zeroth: {exc}\n")
    install_sighup(application)
    application.run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
