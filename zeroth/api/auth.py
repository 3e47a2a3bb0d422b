"""The API-key gate: every endpoint but the probes needs `Authorization: Bearer KEY` once
keys are configured. Answers 401 in OpenAI's words and shape. The middleware calls it."""

from __future__ import annotations

from zeroth.api.errors import ApiError
from zeroth.api.pages import ASSETS, PAGES
from zeroth.auth import KeyChecker, bearer_token

# Load balancers and orchestrators probe these without credentials; a browser opens the pages
# (which ask for the key themselves) and loads their assets without one.
OPEN_PATHS = frozenset({"/health", "/ready", *PAGES})
OPEN_PREFIXES = (ASSETS,)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="zeroth"'}


def is_open(path: str) -> bool:
    """Whether `path` is answered without a key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


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
