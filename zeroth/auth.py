"""API keys: loaded once from the environment or a file, checked in constant time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

KEYS_ENV = "ZEROTH_API_KEYS"
KEYS_FILE_ENV = "ZEROTH_API_KEYS_FILE"


class AuthConfigError(ValueError):
    pass


def _split(text: str) -> list[str]:
    keys = []
    for line in text.replace(",", "\n").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def load_keys(environ: Mapping[str, str] = os.environ) -> list[bytes]:
    """Keys from ZEROTH_API_KEYS (comma- or newline-separated) and/or ZEROTH_API_KEYS_FILE
    (one key a line, '#' comments). No keys means the API is open."""
    keys = _split(environ.get(KEYS_ENV, ""))
    path = environ.get(KEYS_FILE_ENV)
    if path:
        try:
            keys += _split(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise AuthConfigError(f"{KEYS_FILE_ENV}={path}: {exc.strerror}") from None
    return [k.encode("utf-8") for k in keys]


def bearer_token(header: str | None) -> bytes | None:
    """The raw bytes of a `Bearer` token. WSGI hands headers over as latin-1 text, so
    re-encoding as latin-1 recovers the client's bytes (a UTF-8 key stays UTF-8)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        return None
    try:
        return token.encode("latin-1")
    except UnicodeEncodeError:
        return token.encode("utf-8")


class KeyChecker:
    def __init__(self, keys: list[bytes]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def allows(self, token: bytes | None) -> bool:
        if token is None:
            return False
        # Compare against every key, without an early exit, so timing says nothing about
        # which key (or how much of one) matched.
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(token, key)
        return ok
