"""The model registry: every alias of a models list, loaded once, shared by all requests.

This is the server's only mutable state. A reload (issue 5) builds a new registry and swaps
the reference; requests in flight keep the one they started with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from zeroth.checkpoint import CheckpointError
from zeroth.manifest import MANIFEST_NAME
from zeroth.model import StaticEmbedder
from zeroth.models_list import (
    ConfigError,
    Limits,
    ModelEntry,
    ModelsList,
    tiktoken_encoding,
    token_ids_for,
)
from zeroth.tiktoken_ids import EncodingUnavailable, load_encoding

log = logging.getLogger(__name__)

EncodingLoader = Callable[[str], tiktoken.Encoding]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One alias: a (possibly shared) embedder plus the request-side options of its entry."""

    alias: str
    entry: ModelEntry
    embedder: StaticEmbedder
    # Set when the alias reads token-id inputs as ids of this tiktoken encoding.
    encoding: tiktoken.Encoding | None
    # Output size when a request does not ask for `dimensions`.
    dimensions: int
    created: int

    @property
    def native_dim(self) -> int:
        return self.embedder.dim

    @property
    def token_ids(self) -> str:
        """How token-id inputs are read: 'native' or 'tiktoken:<encoding>' (auto resolved)."""
        return token_ids_for(self.alias, self.entry)


class UnknownModel(KeyError):
    pass


class NoModelGiven(KeyError):
    pass


class ModelRegistry:
    def __init__(
        self,
        models: dict[str, ServedModel],
        default: str | None = None,
        limits: Limits | None = None,
    ):
        self._models = models
        self.default = default
        # Part of the registry so that a reload swaps limits and models together.
        self.limits = limits or Limits()

    @classmethod
    def empty(cls) -> ModelRegistry:
        return cls({})

    @property
    def ready(self) -> bool:
        return bool(self._models)

    @classmethod
    def load(
        cls, models_list: ModelsList, encoding_loader: EncodingLoader = load_encoding
    ) -> ModelRegistry:
        """Open every checkpoint; aliases with the same checkpoint and load options share one."""
        source = models_list.source or "models list"
        embedders: dict[tuple, StaticEmbedder] = {}
        models: dict[str, ServedModel] = {}
        for alias, entry in models_list.models.items():
            where = f"{source}: models.{alias}"
            entry = entry.model_copy(update={"path": newest_version(entry.path)})
            key = (entry.path, entry.backend, entry.device, entry.pooling)
            start = time.perf_counter()
            if key not in embedders:
                embedders[key] = _open(where, entry)
            embedder = embedders[key]
            encoding = None
            token_ids = token_ids_for(alias, entry)
            if (name := tiktoken_encoding(token_ids)) is not None:
                try:
                    encoding = encoding_loader(name)
                except EncodingUnavailable as exc:
                    # Under `auto` the user wrote nothing about token ids: say where it came from.
                    why = (
                        " (token_ids: auto, for this OpenAI model name; `token_ids: native` "
                        "reads the model's own ids instead)"
                        if entry.token_ids == "auto"
                        else ""
                    )
                    raise ConfigError(f"{where}.token_ids: {exc}{why}") from None
            dims = entry.dimensions or embedder.dim
            if dims > embedder.dim:
                raise ConfigError(
                    f"{where}.dimensions: {dims} is more than the model's {embedder.dim}"
                )
            models[alias] = ServedModel(
                alias=alias,
                entry=entry,
                embedder=embedder,
                encoding=encoding,
                dimensions=dims,
                created=int((entry.path / MANIFEST_NAME).stat().st_mtime),
            )
            log.info(
                "model %s -> %s (%s/%s, dim %d; tokenizer: %s; token ids: %s%s) in %.2fs",
                alias,
                entry.path,
                entry.backend,
                embedder.pooler.device,
                dims,
                embedder.text.route,
                token_ids,
                " (auto)" if entry.token_ids == "auto" else "",
                time.perf_counter() - start,
            )
        return cls(models, models_list.default, models_list.limits)

    def get(self, alias: str | None) -> ServedModel:
        if alias is None:
            if self.default is None:
                raise NoModelGiven(alias)
            alias = self.default
        try:
            return self._models[alias]
        except KeyError:
            raise UnknownModel(alias) from None

    def __contains__(self, alias: str) -> bool:
        return alias in self._models

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def embedders(self) -> set[int]:
        """Identities of the distinct loaded embedders (several aliases may share one)."""
        return {id(m.embedder) for m in self._models.values()}


class RegistryHolder:
    """The registry a server answers from. A reload replaces what it holds in one assignment;
    each request reads it once and keeps that registry to the end."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry


def newest_version(path: Path) -> Path:
    """`path` itself if it is a checkpoint; else, as OpenVINO Model Server lays models out,
    its highest-numbered subfolder (models/x/1, models/x/2, ...) that holds a checkpoint."""
    if (path / MANIFEST_NAME).is_file() or not path.is_dir():
        return path
    versions = [
        int(child.name)
        for child in path.iterdir()
        if child.name.isascii() and child.name.isdigit() and (child / MANIFEST_NAME).is_file()
    ]
    return path / str(max(versions)) if versions else path


def _open(where: str, entry: ModelEntry) -> StaticEmbedder:
    path: Path = entry.path
    try:
        return StaticEmbedder.from_pretrained(
            path, backend=entry.backend, device=entry.device, pooling=entry.pooling
        )
    except CheckpointError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except Exception as exc:  # corrupt safetensors, bad tokenizer.json, missing IR, no CUDA...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: cannot load {path}: {first}") from None
