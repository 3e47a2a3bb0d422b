"""Zeroth's OpenAI-compatible embeddings server: a thin shell around zeroth.api.app.create_app.

Development:  python server.py [--models-list models_list.yaml] [--host 127.0.0.1] [--port 5000]
Production:   gunicorn -c gunicorn.conf.py server:app     (settings from the environment)

`app` is built on first access, so importing this module (tests, tools) loads no model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flask import Flask

from zeroth.api import app as api
from zeroth.api.state import state_of
from zeroth.models_list import ConfigError
from zeroth.reload import install_sighup
from zeroth.settings import Settings


def __getattr__(name: str) -> Flask:
    # `gunicorn server:app` reads this attribute; building it lazily keeps imports cheap.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        application = api.create_app(Settings.from_env())
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
        settings = Settings.from_env()
        if args.models_list:
            settings = settings.model_copy(update={"models_list": Path(args.models_list)})
        application = api.create_app(settings)
    except ConfigError as exc:
        parser.exit(1, f"zeroth: {exc}\n")
    install_sighup(state_of(application).reloader)
    application.run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
