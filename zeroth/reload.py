"""Reload without downtime: a new models list becomes a new registry, swapped in atomically.

The new registry is built completely beside the old one; only a registry that loaded without
error replaces it, so a broken list (or checkpoint) leaves the server serving the old models.
Requests in flight hold the registry they started with and finish on it.

Under gunicorn (preloaded app) the master reloads on SIGHUP (gunicorn.conf.py's on_reload) and
gunicorn then replaces the workers gracefully, so every worker forks from the new registry.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from flask import Flask

from zeroth.api.routes import set_registry
from zeroth.config import load_models_list
from zeroth.registry import ModelRegistry

log = logging.getLogger(__name__)

MODELS_LIST = "ZEROTH_MODELS_LIST"
# Set in each gunicorn worker: the master to signal so that every worker is replaced.
GUNICORN_MASTER = "ZEROTH_GUNICORN_MASTER"

# Two reloads at once would each load a registry; the later swap would win at random.
_lock = threading.Lock()


def reload_app(app: Flask) -> ModelRegistry:
    """Load the models list again (same path) and swap it in; `ConfigError` leaves the old."""
    path = Path(app.config[MODELS_LIST])
    with _lock:
        registry = ModelRegistry.load(load_models_list(path))
        set_registry(app, registry)
    log.info("reloaded %s: %d models", path, len(registry))
    return registry


def reload_everywhere(app: Flask) -> ModelRegistry:
    """The admin endpoint's reload: here first (which reports a broken list to the caller),
    then, under gunicorn, in the master, which forks fresh workers from it."""
    registry = reload_app(app)
    master = app.config.get(GUNICORN_MASTER)
    if master:
        os.kill(master, signal.SIGHUP)
    return registry


def install_sighup(app: Flask) -> None:
    """For `python server.py`: SIGHUP reloads in this process (gunicorn handles its own)."""

    def _reload() -> None:
        try:
            reload_app(app)
        except Exception as exc:  # logged, never raised: the old models keep serving
            log.error("reload failed, still serving the previous models: %s", exc)

    def _on_hup(signum: int, frame: object) -> None:
        # Loading takes seconds; the signal handler must not block the accept loop.
        threading.Thread(target=_reload, name="zeroth-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, _on_hup)
