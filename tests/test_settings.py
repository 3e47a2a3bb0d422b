"""zeroth.settings.Settings: the one reader of the environment, and the README's table of it."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import write_models_list
from pydantic import ValidationError

from zeroth.launch import GunicornServer
from zeroth.models_list import ConfigError
from zeroth.settings import Settings, env_name, environment_table

REPO = Path(__file__).resolve().parents[1]
# Variables that belong to libraries, read by them as well as by us.
LIBRARY_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR", "TIKTOKEN_CACHE_DIR"}


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_nothing_set_is_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings()
    assert (s.models_list, s.bind, s.workers, s.threads) == (
        Path("models_list.yaml"),
        "0.0.0.0:8000",
        2,
        1,
    )
    assert (s.timeout, s.graceful_timeout, s.io_timeout) == (60, 30, 10.0)
    assert s.max_body_bytes == 16 * 1024 * 1024 and s.api_keys == ()
    assert (s.request_log, s.log_inputs, s.lean_http) == (True, False, True)
    assert s.api_keys_file is s.access_log is s.metrics_dir is s.tiktoken_cache_dir is None


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "MODELS_LIST": "/etc/zeroth/models.yaml",
            "ZEROTH_BIND": "127.0.0.1:9000",
            "ZEROTH_WORKERS": " 4 ",  # surrounding whitespace, as a YAML or .env file leaves it
            "ZEROTH_THREADS": "2",
            "ZEROTH_TIMEOUT": "120",
            "ZEROTH_GRACEFUL_TIMEOUT": "0",
            "ZEROTH_IO_TIMEOUT": "2.5",
            "ZEROTH_MAX_BODY_BYTES": "1000",
            "ZEROTH_API_KEYS_FILE": "/run/secrets/keys",
            "ZEROTH_ACCESS_LOG": "-",
            "PROMETHEUS_MULTIPROC_DIR": "/run/metrics",
            "TIKTOKEN_CACHE_DIR": ".cache/tiktoken",
            "UNRELATED": "ignored",
        }
    )
    assert s.models_list == Path("/etc/zeroth/models.yaml") and s.bind == "127.0.0.1:9000"
    assert (s.workers, s.threads, s.timeout, s.graceful_timeout) == (4, 2, 120, 0)
    assert s.io_timeout == 2.5 and isinstance(s.io_timeout, float)
    assert s.max_body_bytes == 1000
    assert s.api_keys_file == Path("/run/secrets/keys") and s.access_log == "-"
    assert s.metrics_dir == Path("/run/metrics")
    assert s.tiktoken_cache_dir == Path(".cache/tiktoken")


@pytest.mark.parametrize("value", ["0", "false", "False", "OFF", "off", "no", "n", "f"])
def test_false_booleans(value: str) -> None:
    s = Settings.from_env(
        {"ZEROTH_REQUEST_LOG": value, "ZEROTH_LEAN_HTTP": value, "ZEROTH_LOG_INPUTS": "1"}
    )
    assert (s.request_log, s.lean_http, s.log_inputs) == (False, False, True)


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "on", "yes"])
def test_true_booleans(value: str) -> None:
    assert Settings.from_env({"ZEROTH_LOG_INPUTS": value}).log_inputs is True


def test_empty_is_the_default() -> None:
    """An empty or blank variable (`ZEROTH_WORKERS=` in a compose file) keeps the default."""
    environ = {env_name(name): "" for name in Settings.model_fields}
    environ["ZEROTH_WORKERS"] = "   "
    assert Settings.from_env(environ) == Settings()


def test_key_lists() -> None:
    comma = Settings.from_env({"ZEROTH_API_KEYS": " sk-a , sk-b,sk-c "})
    lines = Settings.from_env({"ZEROTH_API_KEYS": "sk-a\nsk-b\r\n sk-c\n"})
    mixed = Settings.from_env({"ZEROTH_API_KEYS": "sk-a,sk-b\nsk-c"})
    assert comma.api_keys == lines.api_keys == mixed.api_keys == ("sk-a", "sk-b", "sk-c")
    assert Settings.from_env({"ZEROTH_API_KEYS": "ключ-🔑"}).api_keys == ("ключ-🔑",)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ZEROTH_WORKERS", "two"),
        ("ZEROTH_WORKERS", "0"),
        ("ZEROTH_WORKERS", "2.5"),
        ("ZEROTH_THREADS", "-1"),
        ("ZEROTH_TIMEOUT", "1m"),
        ("ZEROTH_GRACEFUL_TIMEOUT", "-5"),
        ("ZEROTH_IO_TIMEOUT", "0"),
        ("ZEROTH_IO_TIMEOUT", "soon"),
        ("ZEROTH_MAX_BODY_BYTES", "16MiB"),
        ("ZEROTH_REQUEST_LOG", "maybe"),
        ("ZEROTH_LOG_INPUTS", "2"),
        ("ZEROTH_LEAN_HTTP", "disabled"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str) -> None:
    message = config_error({variable: value, "ZEROTH_BIND": "127.0.0.1:1"})
    assert message.startswith(f"{variable}: ") and repr(value) in message


def test_unknown_log_level_names_the_variable() -> None:
    """gunicorn.conf.py hands the level to logging.basicConfig and gunicorn: an unknown one
    must stop the server in one line, as any other bad value does, not in a traceback."""
    assert Settings.from_env({"ZEROTH_LOG_LEVEL": "debug"}).log_level == "debug"
    assert config_error({"ZEROTH_LOG_LEVEL": "loud"}).startswith("ZEROTH_LOG_LEVEL: ")


def test_settings_are_frozen_and_strict() -> None:
    s = Settings(workers=3)
    with pytest.raises(ValidationError):
        s.workers = 4  # type: ignore[misc]
    assert s.workers == 3
    # A changed copy is a new object (server.py's --models-list), the original stays.
    other = s.model_copy(update={"models_list": Path("cli.yaml")})
    assert other.models_list == Path("cli.yaml") and s.models_list == Path("models_list.yaml")
    with pytest.raises(ValidationError):
        Settings(wrokers=2)  # type: ignore[call-arg]


def test_keys_stay_out_of_repr() -> None:
    s = Settings(api_keys=("sk-very-secret", "ключ-secret"), workers=5)
    for text in (repr(s), str(s), f"{s}"):
        assert "secret" not in text and "workers=5" in text
    assert s.api_keys == ("sk-very-secret", "ключ-secret")


def test_every_field_has_one_variable() -> None:
    names = [env_name(field) for field in Settings.model_fields]
    assert len(names) == len(set(names))
    for name in names:
        assert name.startswith("ZEROTH_") or name == "MODELS_LIST" or name in LIBRARY_VARIABLES
    for field in Settings.model_fields.values():
        assert field.json_schema_extra["doc"]


def readme_environment_table() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^### Environment \(gunicorn\)\n(.*?)(?=^#)", text, re.S | re.M)
    assert match, "README.md has no '### Environment (gunicorn)' section"
    table = [line for line in match.group(1).splitlines() if line.startswith("|")]
    return "\n".join(table) + "\n"


def test_readme_table_is_generated_from_the_settings() -> None:
    table = environment_table()
    assert table.count("\n") == len(Settings.model_fields) + 2
    assert readme_environment_table() == table, (
        "README.md's environment table is out of date: paste `python -m zeroth.settings`"
    )
    printed = subprocess.run(
        [sys.executable, "-m", "zeroth.settings"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert printed == table


def test_gunicorn_refuses_a_bad_setting_in_one_line(tmp_path: Path, tiny_ckpt: Path) -> None:
    """gunicorn.conf.py reads the settings too, before loading anything."""
    models = write_models_list(tmp_path / "m.yaml", {"models": {"m": {"path": str(tiny_ckpt)}}})
    server = GunicornServer(
        models, workers=1, env={"ZEROTH_TIMEOUT": "soon"}, log_path=tmp_path / "server.log"
    )
    with pytest.raises(RuntimeError, match="server exited"):
        server.start()
    log = server.log_text()
    assert "zeroth: ZEROTH_TIMEOUT: " in log and "Traceback" not in log


def _status(url: str, data: bytes | None = None, key: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_settings_reach_the_app_under_gunicorn(gunicorn_server, tmp_path, tiny_ckpt) -> None:
    """Production's route: variables -> Settings.from_env() in server.py -> create_app."""
    models = write_models_list(tmp_path / "m.yaml", {"models": {"m": {"path": str(tiny_ckpt)}}})
    env = {
        "ZEROTH_API_KEYS": "sk-one,sk-two",
        "ZEROTH_MAX_BODY_BYTES": "2000",
        "ZEROTH_LOG_INPUTS": "1",
        "ZEROTH_REQUEST_LOG": "1",
    }
    server = gunicorn_server(models, workers=1, env=env)
    url = server.url + "/v1/embeddings"
    small = b'{"model": "m", "input": "the quick brown cat"}'
    assert _status(url, small) == 401
    assert _status(url, small, "sk-two") == 200
    big = b'{"model": "m", "input": "' + b"cat " * 1000 + b'"}'
    assert _status(url, big, "sk-one") == 413
    assert _status(server.url + "/health") == 200
    server.stop()
    assert '"input":["the quick brown cat"]' in server.log_text()


def test_gunicorn_hooks_leave_other_apps_alone(monkeypatch) -> None:
    """gunicorn reads ./gunicorn.conf.py for any app started from the repository (the bench's
    seed server among them): its hooks must not need our app's state."""
    import runpy
    from types import SimpleNamespace

    from flask import Flask

    from zeroth.settings import Settings as Fresh

    monkeypatch.setattr(Fresh, "from_env", classmethod(lambda cls, environ=None: cls()))
    conf = runpy.run_path(str(Path(__file__).parents[1] / "gunicorn.conf.py"))
    other = Flask("seed")
    server = SimpleNamespace(pid=123, app=SimpleNamespace(wsgi=lambda: other))
    conf["post_fork"](server, None)  # raised KeyError 'zeroth' before
    assert "zeroth" not in other.extensions
