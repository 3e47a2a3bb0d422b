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

from zeroth.models_list import load_models_list
from zeroth.registry import ModelRegistry, RegistryHolder

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, models_list: Path, holder: RegistryHolder):
        self.models_list = Path(models_list)
        self.holder = holder
        # Set in each gunicorn worker (gunicorn.conf.py's post_fork): the master to signal so
        # that every worker is replaced, not only the one that took POST /admin/reload.
        self.master_pid: int | None = None
        # Two reloads at once would each load a registry; the later swap would win at random.
        self._lock = threading.Lock()

    def reload(self) -> ModelRegistry:
        """Load the models list again (same path) and swap it in; `ConfigError` leaves the old."""
        with self._lock:
            registry = ModelRegistry.load(load_models_list(self.models_list))
            self.holder.registry = registry
        log.info("reloaded %s: %d models", self.models_list, len(registry))
        return registry

    def reload_everywhere(self) -> ModelRegistry:
        """The admin endpoint's reload: here first (which reports a broken list to the caller),
        then, under gunicorn, in the master, which forks fresh workers from it."""
        registry = self.reload()
        if self.master_pid:
            os.kill(self.master_pid, signal.SIGHUP)
        return registry


def install_sighup(reloader: Reloader) -> None:
    """For `python server.py`: SIGHUP reloads in this process (gunicorn handles its own)."""

    def _reload() -> None:
        try:
            reloader.reload()
        except Exception as exc:  # logged, never raised: the old models keep serving
            log.error("reload failed, still serving the previous models: %s", exc)

    def _on_hup(signum: int, frame: object) -> None:
        # Loading takes seconds; the signal handler must not block the accept loop.
        threading.Thread(target=_reload, name="zeroth-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, _on_hup)
