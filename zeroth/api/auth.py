"""The API-key gate: every endpoint but the probes needs `Authorization: Bearer KEY` once
keys are configured. Answers 401 in OpenAI's words and shape. The middleware calls it."""

from __future__ import annotations

from zeroth.api.errors import ApiError
from zeroth.auth import KeyChecker, bearer_token

# Load balancers and orchestrators probe these without credentials.
OPEN_PATHS = frozenset({"/health", "/ready"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="zeroth"'}


def needs_key(path: str) -> bool:
    return path not in OPEN_PATHS


def challenge(checker: KeyChecker, header: str | None) -> None:
    """Raise the 401 unless the Authorization header holds one of the keys."""
    token = bearer_token(header)
    if checker.allows(token):
        return
    if token is None:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        # OpenAI shows a masked key here; echoing any part of a secret is not worth it.
        message = "Incorrect API key provided."
    raise ApiError(401, message, code="invalid_api_key", headers=_CHALLENGE)
