"""Every setting of the server, read from the environment here and nowhere else.

`Settings.from_env()` is called once per process (server.py for the app, gunicorn.conf.py for
gunicorn itself) and the object is handed to whatever needs it; tests build `Settings(...)`
directly, so no test depends on the environment it runs in. The README's environment table
is generated from this class (`python -m zeroth.settings`) and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zeroth.models_list import ConfigError


def _env(name: str, doc: str) -> dict:
    return {"json_schema_extra": {"env": name, "doc": doc}}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models_list: Path = Field(
        Path("models_list.yaml"), **_env("MODELS_LIST", "the models list (see below)")
    )
    bind: str = Field("0.0.0.0:8000", **_env("ZEROTH_BIND", "listen address"))
    workers: Annotated[int, Field(ge=1)] = Field(
        2, **_env("ZEROTH_WORKERS", "gunicorn worker processes; they share the table's pages")
    )
    threads: Annotated[int, Field(ge=1)] = Field(
        1,
        **_env(
            "ZEROTH_THREADS",
            "threads per worker; the work is CPU-bound, so a second thread only adds GIL "
            "hand-offs. With 1, each worker answers in its poller's loop "
            "(`zeroth/gunicorn_worker.py`); with more it is gunicorn's gthread",
        ),
    )
    timeout: Annotated[int, Field(ge=1)] = Field(
        60, **_env("ZEROTH_TIMEOUT", "seconds before gunicorn replaces a silent worker")
    )
    graceful_timeout: Annotated[int, Field(ge=0)] = Field(
        30, **_env("ZEROTH_GRACEFUL_TIMEOUT", "seconds in-flight requests get on SIGTERM/reload")
    )
    drain_seconds: Annotated[float, Field(ge=0)] = Field(
        0.0,
        **_env(
            "ZEROTH_DRAIN_SECONDS",
            "on SIGTERM, keep serving this long with `/ready` at 503 and connections closing, "
            "so a balancer that routes on readiness moves away first (`zeroth/drain.py`)",
        ),
    )
    io_timeout: Annotated[float, Field(gt=0)] = Field(
        10.0,
        **_env(
            "ZEROTH_IO_TIMEOUT",
            "a client that stalls mid-request (or stops reading the reply) this many seconds "
            "is dropped",
        ),
    )
    max_body_bytes: Annotated[int, Field(ge=1)] = Field(
        16 * 1024 * 1024, **_env("ZEROTH_MAX_BODY_BYTES", "larger bodies get 413 unread")
    )
    api_keys: tuple[str, ...] = Field(
        (),
        repr=False,  # secrets stay out of any log line that shows the settings
        **_env(
            "ZEROTH_API_KEYS",
            "accepted bearer keys, comma- or newline-separated; unset (and no key file): the "
            "API is open",
        ),
    )
    api_keys_file: Path | None = Field(
        None,
        **_env(
            "ZEROTH_API_KEYS_FILE",
            "a file of keys, one a line, `#` comments; unreadable or empty stops the server",
        ),
    )
    request_log: bool = Field(
        True, **_env("ZEROTH_REQUEST_LOG", "one JSON line per request on stderr")
    )
    log_inputs: bool = Field(
        False, **_env("ZEROTH_LOG_INPUTS", "put the input texts in that line (off: never)")
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", **_env("ZEROTH_LOG_LEVEL", "gunicorn's and the app's level")
    )
    access_log: str | None = Field(
        None,
        **_env(
            "ZEROTH_ACCESS_LOG",
            "gunicorn's access log file (`-` for stderr); gunicorn writes it, so it turns the "
            "lean HTTP route off",
        ),
    )
    lean_http: bool = Field(
        True,
        **_env(
            "ZEROTH_LEAN_HTTP",
            "the worker's lean HTTP/1.1 route (see Speed); 0 sends every request through "
            "gunicorn's own parser, to rule the lean one out when a client misbehaves",
        ),
    )
    metrics_dir: Path | None = Field(
        None,
        **_env(
            "PROMETHEUS_MULTIPROC_DIR",
            "where workers share metrics (prometheus_client's variable); unset: a fresh "
            "temporary folder per server",
        ),
    )
    tiktoken_cache_dir: Path | None = Field(
        None,
        **_env(
            "TIKTOKEN_CACHE_DIR",
            "tiktoken's encodings, for `token_ids: tiktoken:*` (tiktoken's variable); unset: "
            "`.cache/tiktoken` of the repository when present",
        ),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """The settings the environment sets; unset or empty variables keep their default."""
        data: dict[str, object] = {}
        for name in cls.model_fields:
            value = environ.get(env_name(name), "").strip()
            if not value:
                continue
            if name == "api_keys":
                data[name] = tuple(k.strip() for k in value.replace(",", "\n").splitlines())
            elif name == "log_level":
                data[name] = value.lower()
            else:
                data[name] = value
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(
                f"{env_name(str(err['loc'][0]))}: {err['msg']} (got {err.get('input')!r})"
            ) from None


def env_name(field: str) -> str:
    return Settings.model_fields[field].json_schema_extra["env"]


def environment_table() -> str:
    """The README's table of environment variables, from the fields above."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        default = field.default
        if isinstance(default, bool):
            shown = "1" if default else "0"
        elif default in (None, ()):
            shown = "unset"
        elif name == "max_body_bytes":
            shown = f"{default // (1024 * 1024)} MiB"
        else:
            shown = str(default)
        lines.append(f"| `{extra['env']}` | {shown} | {extra['doc']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(environment_table(), end="")
