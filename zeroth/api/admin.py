"""POST /admin/reload: reload the models list without downtime (see zeroth/reload.py).

Only served when API keys are configured: an open server must not let anyone make it load
models. The key check (zeroth/api/middleware.py) covers /admin/* like the rest of the API.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response

from zeroth.api.errors import ApiError
from zeroth.api.state import state_of
from zeroth.models_list import ConfigError

admin = Blueprint("zeroth_admin", __name__)


@admin.post("/admin/reload")
def reload_models() -> Response:
    state = state_of()
    if not state.keys.enabled:
        raise ApiError(
            403,
            "Admin endpoints need API keys: set ZEROTH_API_KEYS or ZEROTH_API_KEYS_FILE "
            "(or send the server SIGHUP)",
            code="admin_disabled",
        )
    try:
        registry = state.reloader.reload_everywhere()
    except ConfigError as exc:
        raise ApiError(
            400, f"Reload failed; still serving the previous models: {exc}", code="reload_failed"
        ) from None
    body = {
        "status": "reloaded",
        "models": [m.alias for m in registry],
        # Under gunicorn the master reloads too and replaces the workers gracefully.
        "workers": "replacing" if state.reloader.master_pid else "single process",
    }
    return Response(orjson.dumps(body), mimetype="application/json")
