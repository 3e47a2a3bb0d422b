"""API keys: loaded once (from the settings and a key file), checked in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path

from zeroth.models_list import ConfigError


class AuthConfigError(ConfigError):
    """Keys that cannot be loaded; the server refuses to start rather than run open."""


def _keys(lines: list[str]) -> list[str]:
    keys = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def load_keys(keys: Sequence[str] = (), keys_file: Path | None = None) -> list[bytes]:
    """`keys` (ZEROTH_API_KEYS, already split) plus those of `keys_file` (one key a line, '#'
    comments, surrounding whitespace ignored). No keys at all: the API is open."""
    found = _keys(list(keys))
    if keys_file is not None:
        where = f"ZEROTH_API_KEYS_FILE={keys_file}"
        try:
            # A key may hold a comma; only the environment variable splits on them.
            from_file = _keys(Path(keys_file).read_text(encoding="utf-8-sig").splitlines())
        except OSError as exc:
            raise AuthConfigError(f"{where}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise AuthConfigError(f"{where}: not UTF-8 text") from None
        if not from_file:
            # An empty file most likely means a failed secret mount: starting open would be
            # the worst way to find out.
            raise AuthConfigError(f"{where}: the file holds no keys")
        found += from_file
    return [k.encode("utf-8") for k in found]


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
    except UnicodeEncodeError:  # a test client that passed non-latin-1 text through as-is
        return token.encode("utf-8", "surrogatepass")


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
