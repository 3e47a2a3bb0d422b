"""models_list.yaml: which OpenAI-style aliases the server answers, and with what checkpoint.

    models:
      text-embedding-3-small:
        path: models/smollm2-135m      # relative to this file
      my-smollm2: {path: models/smollm2-135m, token_ids: native}
    default: text-embedding-3-small

Mistakes fail at start-up with one line naming the entry and key (`ConfigError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# OpenAI's own per-input limit is 8191 tokens; one more keeps the arithmetic round.
DEFAULT_MAX_TOKENS = 8192
# OpenAI's documented limits per embeddings request.
DEFAULT_MAX_INPUTS = 2048
DEFAULT_MAX_TOTAL_TOKENS = 300_000
_TOKEN_IDS = re.compile(r"^(auto|native|tiktoken:[A-Za-z0-9_.-]+)$")
# What `token_ids: auto` reads token-id inputs as, for aliases named like OpenAI's embedding
# models: clients (LangChain's OpenAIEmbeddings) tokenise for such names with tiktoken and send
# the ids, so for these names the ids are known to be that encoding's.
OPENAI_TOKEN_IDS = {
    "text-embedding-3-small": "tiktoken:cl100k_base",
    "text-embedding-3-large": "tiktoken:cl100k_base",
    "text-embedding-ada-002": "tiktoken:cl100k_base",
}


class ConfigError(ValueError):
    """A models list that cannot be served; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    path: Path
    backend: Literal["torch", "openvino"] = "torch"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    pooling: Literal["mean", "max"] = "mean"
    # The issue spells it "normalise"; accept both so the file can be written from memory.
    normalize: bool = Field(True, validation_alias=AliasChoices("normalize", "normalise"))
    max_tokens: Annotated[int, Field(ge=1)] = DEFAULT_MAX_TOKENS
    on_overflow: Literal["error", "truncate"] = "error"
    # Output size when a request does not ask for `dimensions`; None means the model's own.
    dimensions: Annotated[int, Field(ge=1)] | None = None
    # How to read token-id inputs: the model's own ids, or ids of a tiktoken encoding
    # (LangChain sends cl100k_base ids for OpenAI model names), decoded and re-tokenised;
    # `auto` picks by the alias (token_ids_for), so a list with only `path:` serves LangChain.
    token_ids: str = "auto"
    owned_by: str = "zeroth"

    @field_validator("token_ids")
    @classmethod
    def _token_ids(cls, value: str) -> str:
        if not _TOKEN_IDS.match(value):
            raise ValueError(
                "must be 'auto', 'native' or 'tiktoken:<encoding>', e.g. tiktoken:cl100k_base"
            )
        return value


def token_ids_for(alias: str, entry: ModelEntry) -> str:
    """How `alias` reads token-id inputs: 'native' or 'tiktoken:<encoding>' (never 'auto')."""
    if entry.token_ids != "auto":
        return entry.token_ids
    return OPENAI_TOKEN_IDS.get(alias, "native")


def tiktoken_encoding(token_ids: str) -> str | None:
    """The encoding named by a resolved `token_ids` value; None for the model's own ids."""
    return token_ids.partition(":")[2] or None


class Limits(_Strict):
    """Per-request limits shared by every model (tokens per input are per model)."""

    max_inputs: Annotated[int, Field(ge=1)] = DEFAULT_MAX_INPUTS
    max_total_tokens: Annotated[int, Field(ge=1)] = DEFAULT_MAX_TOTAL_TOKENS


class ModelsList(_Strict):
    models: dict[str, ModelEntry] = Field(min_length=1)
    default: str | None = None
    limits: Limits = Limits()
    # API keys stay out of this file (environment or a key file): writing an `auth:` section
    # fails as an unknown key rather than being silently ignored.

    # Set by load_models_list (model_copy skips validation), never by the file: the file
    # this list came from, whose folder entry paths are already resolved against.
    source: Path | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _not_from_the_file(cls, value: object) -> None:
        raise ValueError("unknown key (set by the loader, not the file)")

    @field_validator("models")
    @classmethod
    def _aliases(cls, models: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        for alias in models:
            if not alias.strip():
                raise ValueError("an alias must not be empty")
        return models

    @model_validator(mode="after")
    def _default_is_known(self) -> ModelsList:
        if self.default is not None and self.default not in self.models:
            raise ValueError(f"default {self.default!r} is not one of the models")
        return self


def _one_line(source: str, exc: ValidationError) -> str:
    # A misspelt key also shows up as a missing one; the misspelling is the useful half.
    err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    loc = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        where = err["loc"][:-1]
        if where[:1] == ("limits",):
            allowed = Limits.model_fields
        else:
            allowed = ModelEntry.model_fields if len(where) == 2 else ModelsList.model_fields
        names = sorted(a for a in allowed if a != "source")
        msg = f"unknown key (allowed: {', '.join(names)})"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}" if loc else f"{source}: {msg}{more}"


def parse_models_list(data: object, base: Path, source: str = "models list") -> ModelsList:
    """Validate an already-parsed YAML document; relative paths resolve against `base`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'models' key")
    try:
        parsed = ModelsList.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(source, exc)) from None
    models = {
        alias: entry.model_copy(update={"path": (base / entry.path.expanduser()).resolve()})
        for alias, entry in parsed.models.items()
    }
    return parsed.model_copy(update={"models": models})


def load_models_list(path: str | Path) -> ModelsList:
    """Read and validate a models_list.yaml (checkpoints are not opened here)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read models list ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    parsed = parse_models_list(data, path.parent, str(path))
    return parsed.model_copy(update={"source": path.resolve()})
