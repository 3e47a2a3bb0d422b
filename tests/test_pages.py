"""/ and /docs through Flask's test client: served, open without a key, self-contained (every
file they load comes from this server), and nothing else opened by the prefix rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zeroth.api.auth import is_open

KEY = "sk-pages"


@pytest.fixture(scope="module")
def keyed(models_list: Path):
    from conftest import make_app

    app = make_app(models_list, api_keys=(KEY,))
    app.config["TESTING"] = True
    return app.test_client()


def _refs(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_pages_are_served_with_only_local_assets(client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    refs = _refs(resp.get_data(as_text=True))
    assert refs
    for ref in refs:
        # Offline and behind a firewall: nothing from another host, every file really here.
        assert ref.startswith(("/", "data:")) and not ref.startswith("//"), ref
        if ref.startswith("/assets/"):
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            assert asset.mimetype in ("text/css", "text/javascript"), ref
            assert len(asset.get_data()) > 200, ref  # a real file, not an error page
    # The scripts talk to this server only, by path.
    for ref in refs:
        if ref.endswith(".js") and "swagger-ui" not in ref:
            script = client.get(ref).get_data(as_text=True)
            assert "http://" not in script and "https://" not in script, ref


def test_swagger_ui_is_the_packaged_one(client) -> None:
    import flask_swagger_ui

    dist = Path(flask_swagger_ui.__file__).with_name("dist")
    resp = client.get("/assets/swagger-ui/swagger-ui-bundle.js")
    assert resp.get_data() == (dist / "swagger-ui-bundle.js").read_bytes()
    assert "max-age=86400" in resp.headers["Cache-Control"]


def test_pages_and_assets_need_no_key_the_api_still_does(keyed) -> None:
    for path in ("/", "/docs", "/assets/playground.js", "/assets/swagger-ui/swagger-ui.css"):
        assert keyed.get(path).status_code == 200, path
    for path in ("/v1/models", "/openapi.json", "/metrics", "/docs/", "/docsx", "/assetsx"):
        resp = keyed.get(path)
        assert resp.status_code == 401, path
        assert resp.get_json()["error"]["code"] == "invalid_api_key"
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/assets/../v1/models",
        "/assets/%2e%2e/v1/models",
        "/assets/swagger-ui/../../../server.py",
        "/assets/../../zeroth/auth.py",
        "/assets/nope.js",
        "/assets/swagger-ui/nope.js",
        "/assets/",
        "/assets/swagger-ui/",
        "/assets/a%00b.js",
        "/assets/..%2fserver.py",
    ],
)
def test_the_open_prefix_reaches_nothing_else(keyed, path: str) -> None:
    resp = keyed.get(path)
    # A missing file is a 404 in OpenAI's shape, never another route's answer or a file
    # outside the asset folders.
    assert resp.status_code == 404
    assert resp.mimetype == "application/json"
    assert "Invalid URL" in resp.get_json()["error"]["message"]


def test_is_open() -> None:
    assert is_open("/") and is_open("/docs") and is_open("/health") and is_open("/ready")
    assert is_open("/assets/playground.css")
    assert not is_open("/assets") and not is_open("/v1/embeddings") and not is_open("/docs/x")


def test_wrong_method_on_a_page_is_405_json(client) -> None:
    resp = client.post("/docs", json={})
    assert resp.status_code == 405
    assert resp.get_json()["error"]["code"] == "method_not_allowed"
