"""GET /openapi.json: the server's OpenAPI description (openapi.yaml beside this file)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson
import yaml
from flask import Blueprint, Response

SPEC = Path(__file__).with_name("openapi.yaml")

docs = Blueprint("zeroth_openapi", __name__)


@cache
def spec() -> dict:
    return yaml.safe_load(SPEC.read_text(encoding="utf-8"))


@docs.get("/openapi.json")
def openapi() -> Response:
    return Response(orjson.dumps(spec()), mimetype="application/json")
