"""API keys: who gets in, what the others are told, and how keys are read."""

from __future__ import annotations

import http.client
import threading
from pathlib import Path

import pytest
from conftest import make_app
from werkzeug.serving import make_server

from zeroth.auth import AuthConfigError, KeyChecker, bearer_token, load_keys
from zeroth.settings import Settings

KEYS = ["sk-first", "second key with spaces", "clé-ünïcødé-🔑"]
GOOD_BODY = {"input": "the cat", "model": "tiny"}


@pytest.fixture(scope="module")
def keyed_app(models_list: Path):
    app = make_app(models_list, api_keys=tuple(KEYS))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def keyed(keyed_app):
    return keyed_app.test_client()


def _auth(value: str) -> dict[str, str]:
    return {"Authorization": value}


def _as_wsgi(text: str) -> str:
    """What a WSGI server hands over for a header sent as UTF-8: the bytes read as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def _assert_401(resp, wording: str) -> None:
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    err = resp.get_json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "invalid_api_key"
    assert wording in err["message"]
    # The secret a client sent never comes back.
    assert "sk-" not in err["message"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "/v1/embeddings"),
        ("get", "/v1/models"),
        ("get", "/v1/models/tiny"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("post", "/admin/reload"),
        ("get", "/no/such/path"),
    ],
)
def test_no_key_is_refused_everywhere_but_the_probes(keyed, method, path) -> None:
    resp = getattr(keyed, method)(path, json=GOOD_BODY if method == "post" else None)
    _assert_401(resp, "You didn't provide an API key")


def test_probes_stay_open(keyed) -> None:
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sk-wrong",
        "Bearer sk-firs",  # a prefix of a key
        "Bearer sk-first-and-more",
        "Bearer SK-FIRST",
        "Basic c2stZmlyc3Q6",  # the right key, wrong scheme
        "sk-first",  # no scheme
    ],
)
def test_wrong_key_is_refused(keyed, header) -> None:
    resp = keyed.post("/v1/embeddings", json=GOOD_BODY, headers=_auth(header))
    if header.startswith("Bearer"):
        _assert_401(resp, "Incorrect API key provided")
    else:
        _assert_401(resp, "You didn't provide an API key")


def test_empty_bearer_counts_as_no_key(keyed) -> None:
    resp = keyed.post("/v1/embeddings", json=GOOD_BODY, headers=_auth("Bearer   "))
    _assert_401(resp, "You didn't provide an API key")


@pytest.mark.parametrize("key", KEYS)
def test_every_right_key_gets_in(keyed, key) -> None:
    headers = _auth(f"Bearer {_as_wsgi(key)}")
    resp = keyed.post("/v1/embeddings", json=GOOD_BODY, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert len(resp.get_json()["data"][0]["embedding"]) == 16
    assert keyed.get("/v1/models", headers=headers).status_code == 200
    assert keyed.get("/metrics", headers=headers).status_code == 200


def test_scheme_is_case_insensitive_and_whitespace_around_the_token_ignored(keyed) -> None:
    for header in ("bearer sk-first", "BEARER  sk-first  ", "  Bearer sk-first"):
        assert keyed.get("/v1/models", headers=_auth(header)).status_code == 200, header


def test_unicode_key_as_text_from_the_test_client(keyed) -> None:
    # werkzeug's test client passes non-latin-1 text through unchanged; still the same key.
    assert keyed.get("/v1/models", headers=_auth(f"Bearer {KEYS[2]}")).status_code == 200
    mangled = KEYS[2].encode("utf-8").decode("cp1252", "replace")
    resp = keyed.get("/v1/models", headers=_auth(f"Bearer {mangled}"))
    _assert_401(resp, "Incorrect API key provided")


def test_unicode_key_over_a_real_socket(keyed_app) -> None:
    """The bytes a real client sends (UTF-8) reach the checker unchanged through a WSGI server."""
    server = make_server("127.0.0.1", 0, keyed_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        statuses = []
        for key in (KEYS[2].encode("utf-8"), b"cl\xe9-wrong", KEYS[2].encode("latin-1", "replace")):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.putrequest("GET", "/v1/models")
            conn.putheader("Authorization", b"Bearer " + key)
            conn.endheaders()
            statuses.append(conn.getresponse().status)
            conn.close()
        assert statuses == [200, 401, 401]
    finally:
        server.shutdown()
        thread.join(5)


def test_no_keys_means_open(client) -> None:
    assert client.get("/v1/models").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_bearer_token_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("") is None
    assert bearer_token("Bearer") is None
    assert bearer_token("Token abc") is None
    assert bearer_token("Bearer abc") == b"abc"
    assert bearer_token("Bearer a b") == b"a b"  # inner whitespace is part of the token
    assert bearer_token(_as_wsgi("Bearer ключ")) == "ключ".encode()
    assert bearer_token("Bearer ключ") == "ключ".encode()


def test_key_checker_compares_whole_keys() -> None:
    checker = KeyChecker([b"alpha", "βeta".encode()])
    assert checker.enabled
    assert checker.allows(b"alpha") and checker.allows("βeta".encode())
    assert not checker.allows(b"alph") and not checker.allows(b"alphaa")
    assert not checker.allows(None) and not checker.allows(b"")
    assert not KeyChecker([]).enabled


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(
        "# rotated 2026-01\n  sk-file-one  \n\n\tsk-file,two\t\n# sk-commented-out\nключ\n",
        encoding="utf-8",
    )
    env = {"ZEROTH_API_KEYS": " sk-env-one , sk-env-two\n", "ZEROTH_API_KEYS_FILE": str(key_file)}
    settings = Settings.from_env(env)
    assert load_keys(settings.api_keys, settings.api_keys_file) == [
        b"sk-env-one",
        b"sk-env-two",
        b"sk-file-one",
        b"sk-file,two",  # a comma is part of a key in the file
        "ключ".encode(),
    ]
    assert load_keys() == []
    blank = Settings.from_env({"ZEROTH_API_KEYS": " , \n"})
    assert load_keys(blank.api_keys, blank.api_keys_file) == []


def test_key_file_problems_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(AuthConfigError, match=r"ZEROTH_API_KEYS_FILE=.*nope.txt: No such file"):
        load_keys(keys_file=missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(AuthConfigError, match="holds no keys"):
        load_keys(("sk-from-env",), empty)


def test_missing_key_file_stops_the_app_before_loading_models(tmp_path: Path) -> None:
    # The models list does not exist either: the key file must be the error reported.
    with pytest.raises(AuthConfigError, match="ZEROTH_API_KEYS_FILE="):
        make_app(tmp_path / "absent.yaml", api_keys_file=tmp_path / "absent-keys")


def test_missing_key_file_stops_start_up(models_list: Path, monkeypatch, tmp_path, capsys) -> None:
    """server.py is the shell that reads the environment (Settings.from_env), as gunicorn and
    `python server.py` run it; so here, and only here, the test sets variables."""
    import server

    monkeypatch.setenv("ZEROTH_API_KEYS_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("MODELS_LIST", str(models_list))
    monkeypatch.delitem(server.__dict__, "app", raising=False)
    with pytest.raises(SystemExit) as stop:
        server.app  # noqa: B018 - what gunicorn does
    message = str(stop.value)
    assert message.startswith("zeroth: ZEROTH_API_KEYS_FILE=") and "\n" not in message
    with pytest.raises(SystemExit) as dev:
        server.main(["--models-list", str(models_list)])
    assert dev.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("zeroth: ZEROTH_API_KEYS_FILE=") and err.count("\n") == 1
