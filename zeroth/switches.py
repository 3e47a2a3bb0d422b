"""On/off environment switches for the speed routes (ZEROTH_FAST_PATH, ZEROTH_FAST_TOKENIZER,
ZEROTH_LEAN_HTTP): on unless set to 0, false, no or off."""

from __future__ import annotations

import os

_OFF = ("0", "false", "no", "off")


def switched_off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in _OFF
