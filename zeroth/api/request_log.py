"""One JSON line per request on the `zeroth.requests` logger, and the request's id.

The line holds what an operator needs (id, method, path, model, inputs, tokens, status,
latency) and never the input text, unless ZEROTH_LOG_INPUTS=1 asks for it. The middleware
(zeroth/api/middleware.py) writes it for every request.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass

import orjson

from zeroth.api.schemas import EmbeddingRequest

REQUEST_ID = "X-Request-ID"
REQUEST_LOG = "zeroth.request_log"
log = logging.getLogger("zeroth.requests")

# A client's id is echoed into our logs and headers: keep it short and printable.
_VALID_ID = re.compile(r"[\x21-\x7e]{1,128}")


def _new_id() -> str:
    # 128 random bits, as uuid4 has, at a fifth of its cost.
    return os.urandom(16).hex()


@dataclass(slots=True)
class Notes:
    """What the endpoint learnt about an embeddings request, for its log line."""

    req: EmbeddingRequest | None = None
    model: str | None = None
    tokens: int | None = None


def request_id_from(given: str | None) -> str:
    """The client's X-Request-ID when short and printable, else a new one."""
    return given if given and _VALID_ID.fullmatch(given) else _new_id()


def write_line(
    request_id: str,
    method: str | None,
    path: str,
    status: int,
    start: float | None,
    notes: Notes | None,
    log_inputs: bool,
) -> None:
    """The request's JSON line on the `zeroth.requests` logger."""
    req = notes.req if notes is not None else None
    record = {
        "ts": round(time.time(), 3),
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": round((time.perf_counter() - start) * 1000, 3) if start else None,
        "model": notes.model if notes is not None else None,
        "inputs": req.n_inputs if req is not None else None,
        "tokens": notes.tokens if notes is not None else None,
    }
    if log_inputs and req is not None:
        record["input"] = req.texts if req.texts is not None else req.ids
    line = orjson.dumps(record).decode()
    # makeRecord + handle: log.info would also walk the stack for a caller we never show.
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None))


def configure(enabled: bool) -> None:
    """Send the lines to stderr as bare JSON, without the prefix of the server's other logs."""
    if not enabled:
        return
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
