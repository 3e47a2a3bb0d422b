"""What a running app holds: its settings, the registry, the reloader, metrics and keys.

One object per app (in `app.extensions`), built by create_app and read by the middleware and
the views, so nothing in the HTTP layer reaches for globals or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from zeroth.api.metrics import Metrics
from zeroth.auth import KeyChecker
from zeroth.registry import ModelRegistry, RegistryHolder
from zeroth.reload import Reloader
from zeroth.settings import Settings

STATE = "zeroth"


@dataclass(frozen=True)
class ServerState:
    settings: Settings
    holder: RegistryHolder
    reloader: Reloader
    metrics: Metrics
    keys: KeyChecker

    @property
    def registry(self) -> ModelRegistry:
        return self.holder.registry


def state_of(app: Flask | None = None) -> ServerState:
    """The state of `app`, or of the app handling the current request."""
    return (app or current_app).extensions[STATE]
