"""The pages a person opens in a browser: `/`, a playground that embeds texts through
POST /v1/embeddings and shows their cosine similarities, and `/docs`, the OpenAPI description
as Swagger UI. Every file they load is served from here (Swagger UI's from the
flask-swagger-ui wheel), so they work offline and behind a firewall: no CDN, no build step.

The pages and assets need no API key (zeroth.api.auth.OPEN_PATHS): they hold nothing secret,
and the pages ask for the key themselves, keeping it in the page's memory only.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).with_name("static")
SWAGGER_UI = Path(flask_swagger_ui.__file__).with_name("dist")

PAGES = frozenset({"/", "/docs"})
ASSETS = "/assets/"

# Only this origin, for everything: a page that reaches for a CDN fails here as it would
# offline (and the browser test would see it). Swagger UI sets inline styles.
_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

pages = Blueprint("zeroth_pages", __name__)


def _page(name: str) -> Response:
    resp = send_from_directory(STATIC, name, max_age=0)
    resp.headers.update(_PAGE_HEADERS)
    return resp


@pages.get("/")
def playground() -> Response:
    return _page("playground.html")


@pages.get("/docs")
def api_docs() -> Response:
    return _page("docs.html")


@pages.get(ASSETS + "swagger-ui/<path:name>")
def swagger_ui_asset(name: str) -> Response:
    # Versioned with the installed package, so a day's caching is safe.
    resp = send_from_directory(SWAGGER_UI, name, max_age=86400)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@pages.get(ASSETS + "<path:name>")
def asset(name: str) -> Response:
    # Ours change with the server: revalidate every time (ETag makes that cheap).
    resp = send_from_directory(STATIC, name, max_age=0)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
