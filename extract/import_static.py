"""Import a trained static-embedding model (model2vec, sentence-transformers StaticEmbedding,
WordLlama) into a zeroth checkpoint that the server answers with the library's own vectors.

Each library's encode is a mean of per-token rows over the ids its tokenizer gives, so the
checkpoint holds those rows as stored (manifest norm None: no scale, no RMSNorm, no
post-processing), the library's tokenizer and its special-token setting. What each encode does,
read from the libraries' sources (the versions pinned in requirements-dev.txt):

model2vec StaticModel.encode: tokenizer.json with add_special_tokens=False; the text is cut to
    max_length * (median token length) characters, then to max_length tokens (config.json,
    default 512); the unknown token is dropped (token weight 0 here); the mean of
    embeddings[mapping[id]] * weights[id] (mapping and weights only in vocabulary-quantised
    models, folded into the rows here); L2 when config.json says normalize.
sentence-transformers StaticEmbedding: the module's tokenizer.json as saved (its truncation is
    kept, padding is not), add_special_tokens=False; EmbeddingBag's mean (the unknown token
    counts); a Normalize module when modules.json lists one.
WordLlama WordLlamaInference.embed: tokenizers/<config>_tokenizer_config.json with
    add_special_tokens=False and no truncation (the training config's max_length is not used at
    inference); padding is masked out, so a plain mean; norm=False by default; the table is
    weights/<config>_<dim>.safetensors, trained Matryoshka-style for the dims in
    config/train/<config>.toml.

The libraries themselves are not needed: their files are read with safetensors, json, tomllib
and tokenizers.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer

from extract.errors import ExtractError, UsageError
from extract.source import sha256_file
from zeroth.checkpoint import EMBED, TOKEN_WEIGHTS, Checkpoint
from zeroth.manifest import TOKENIZER_NAME, ImportSpec, Library, Manifest, SourceSpec

# model2vec's default when config.json has no max_length (model2vec.model.DEFAULT_MAX_LENGTH).
MODEL2VEC_MAX_LENGTH = 512
# Options of `python -m extract` that shape an LLM extraction and mean nothing for a table that
# is served as trained; an import refuses them when set to anything but their default.
LLM_ONLY = (
    "family",
    "table",
    "norm",
    "standardise",
    "revision",
    "add_special_tokens",
    "weighting",
    "sif_a",
    "freq",
    "corpus",
    "corpus_field",
    "stats_docs",
    "remove_components",
    "component_removal",
    "center",
    "teacher",
    "align_lambda",
    "align_prior",
)


@dataclass
class ImportedModel:
    """What a library's encode averages, and how it got there."""

    table: torch.Tensor  # [V, H] float32: the row each token id contributes to the mean
    tokenizer_json: Path
    spec: ImportSpec
    source: SourceSpec
    architecture: str


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExtractError(f"{path}: unreadable: {first}") from exc


def _tensors(path: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The named tensors present in a safetensors file (by name: nothing else is read)."""
    if not path.is_file():
        raise ExtractError(f"{path}: missing (safetensors weights are needed)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in names if name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ExtractError(f"{path}: not a readable safetensors file: {exc}") from exc


def _tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise ExtractError(f"{path}: missing (the model's tokenizer)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise ExtractError(f"{path}: unreadable tokenizer: {exc}".splitlines()[0]) from exc


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _source(kind: Library, folder: Path, weights: Path) -> SourceSpec:
    return SourceSpec(
        kind=kind,
        id=str(folder),
        sha256=sha256_file(weights),
        file=str(weights.relative_to(folder)),
    )


# --- detection -------------------------------------------------------------------------------


def _wordllama_weights(folder: Path) -> list[Path]:
    # <config>_<dim>_binary.safetensors feeds the library's binary (Hamming) mode, which an
    # OpenAI endpoint has no format for; the wheel ships none.
    return sorted(
        p for p in (folder / "weights").glob("*.safetensors") if not p.stem.endswith("_binary")
    )


def _modules(folder: Path) -> list[dict] | None:
    path = folder / "modules.json"
    if not path.is_file():
        return None
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ExtractError(f"{path}: expected a list of modules")
    return modules


def _is_type(module: dict, name: str) -> bool:
    # Saved as e.g. sentence_transformers.models.StaticEmbedding (v2-v5) or
    # sentence_transformers.sentence_transformer.modules.static_embedding.StaticEmbedding (v6).
    return str(module.get("type", "")).rsplit(".", 1)[-1] == name


def _is_llm(config: dict) -> bool:
    from zeroth.families import UnknownFamilyError, detect_family

    try:
        detect_family(config)
    except UnknownFamilyError:
        return False
    return True


def detect(folder: Path) -> Library | None:
    """Which library's model the folder holds; None for anything else (an LLM checkpoint)."""
    if not folder.is_dir():
        return None
    if (folder / "tokenizers").is_dir() and _wordllama_weights(folder):
        return "wordllama"
    config_path = folder / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    if isinstance(config, dict) and config.get("model_type") == "model2vec":
        return "model2vec"
    modules = _modules(folder)
    if modules is not None:
        if modules and _is_type(modules[0], "StaticEmbedding"):
            return "sentence-transformers"
        if isinstance(config, dict) and _is_llm(config):
            return None  # an LLM-based sentence-transformers model: its table is extracted
        first = modules[0].get("type", "?") if modules else "nothing"
        raise ExtractError(
            f"{folder}: a sentence-transformers model whose first module is {first}: only "
            "StaticEmbedding models are static tables (distil one with model2vec)"
        )
    return None


# --- the three readers -----------------------------------------------------------------------


def _unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """As model2vec's _get_unk_token_id: the model's unk token (WordPiece, BPE, WordLevel) or
    Unigram's unk_id."""
    token = getattr(tokenizer.model, "unk_token", None)
    if token is not None:
        return tokenizer.token_to_id(token)
    return json.loads(tokenizer.to_str())["model"].get("unk_id")


def read_model2vec(folder: Path) -> ImportedModel:
    config = _read_json(folder / "config.json")
    weights_path = folder / "model.safetensors"
    t = _tensors(weights_path, ("embeddings", "mapping", "weights"))
    if "embeddings" not in t:
        raise ExtractError(f"{weights_path}: no 'embeddings' tensor (not a model2vec model)")
    # int8 tables are averaged as their integer values (model2vec stores no scale).
    table = t["embeddings"].to(torch.float32)
    if "mapping" in t:
        table = table[t["mapping"].long()]
    if "weights" in t:
        table = table * t["weights"].to(torch.float32)[:, None]
    tokenizer_json = folder / TOKENIZER_NAME
    tokenizer = _tokenizer(tokenizer_json)
    max_tokens = config.get("max_length", MODEL2VEC_MAX_LENGTH)
    max_chars = None
    if max_tokens is not None:
        # StaticModel.median_token_length, over its tokens (the vocabulary with added tokens).
        lengths = [len(token) for token in tokenizer.get_vocab(with_added_tokens=True)]
        max_chars = max_tokens * int(np.median(lengths))
    spec = ImportSpec(
        library="model2vec",
        version=_installed("model2vec"),
        normalize=bool(config.get("normalize", False)),
        max_tokens=max_tokens,
        max_chars=max_chars,
        drop_token_id=_unknown_token_id(tokenizer),
        pca_dims=table.shape[1] if config.get("apply_pca") is not None else None,
    )
    return ImportedModel(
        table, tokenizer_json, spec, _source("model2vec", folder, weights_path), "StaticModel"
    )


def read_sentence_transformers(folder: Path) -> ImportedModel:
    modules = _modules(folder) or []
    for module in modules[1:]:
        if not _is_type(module, "Normalize"):
            raise ExtractError(
                f"{folder}/modules.json: {module.get('type')} after StaticEmbedding: only "
                "StaticEmbedding (+ Normalize) models can be served as a table"
            )
        config = folder / module.get("path", "") / "config.json"
        target = _read_json(config).get("module_input_name") if config.is_file() else None
        if target not in (None, "sentence_embedding"):
            raise ExtractError(f"{config}: Normalize of {target!r}, not the sentence embedding")
    module_dir = folder / modules[0].get("path", "")
    config_path = folder / "config_sentence_transformers.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    prompt_name = config.get("default_prompt_name")
    if prompt_name and (config.get("prompts") or {}).get(prompt_name):
        raise ExtractError(
            f"{config_path}: default prompt {prompt_name!r} is prepended to every text by the "
            "library; Zeroth embeds texts as given, so the vectors would differ"
        )
    weights_path = module_dir / "model.safetensors"
    if not weights_path.is_file() and (module_dir / "pytorch_model.bin").is_file():
        raise ExtractError(
            f"{module_dir}: only pytorch_model.bin (a pickle); re-save the model with "
            "safetensors (SentenceTransformer.save(..., safe_serialization=True))"
        )
    t = _tensors(weights_path, ("embedding.weight", "embeddings", "mapping", "weights"))
    if "embedding.weight" in t:
        table = t["embedding.weight"].to(torch.float32)
    elif "embeddings" in t:
        # StaticEmbedding.load reads model2vec-style weights too (_fold_model2vec_weights).
        table = t["embeddings"].to(torch.float32)
        if "mapping" in t:
            table = table[t["mapping"].long()]
        if "weights" in t:
            table = table * t["weights"].to(torch.float32)[:, None]
    else:
        raise ExtractError(f"{weights_path}: no 'embedding.weight' tensor")
    tokenizer_json = module_dir / TOKENIZER_NAME
    truncation = _tokenizer(tokenizer_json).truncation
    if truncation is not None and truncation.get("direction", "right") != "right":
        raise ExtractError(
            f"{tokenizer_json}: truncates from the {truncation['direction']}; the server keeps "
            "the first tokens of a text"
        )
    version = (config.get("__version__") or {}).get("sentence_transformers")
    spec = ImportSpec(
        library="sentence-transformers",
        version=version or _installed("sentence-transformers"),
        normalize=any(_is_type(m, "Normalize") for m in modules[1:]),
        max_tokens=truncation["max_length"] if truncation else None,
    )
    source = _source("sentence-transformers", folder, weights_path)
    return ImportedModel(table, tokenizer_json, spec, source, "StaticEmbedding")


def _wordllama_version(folder: Path) -> str | None:
    # `python -m extract.fetch wordllama` keeps the wheel's METADATA beside the weights.
    for info in sorted(folder.glob("wordllama-*.dist-info")):
        return metadata.Distribution.at(info).version
    return _installed("wordllama")


def read_wordllama(folder: Path) -> ImportedModel:
    candidates = _wordllama_weights(folder)
    if len(candidates) != 1:
        names = ", ".join(p.name for p in candidates)
        raise ExtractError(
            f"{folder}/weights: expected one <config>_<dim>.safetensors, found {names}"
        )
    weights_path = candidates[0]
    config_name, _, dim = weights_path.stem.rpartition("_")
    t = _tensors(weights_path, ("embedding.weight",))
    if "embedding.weight" not in t:
        raise ExtractError(f"{weights_path}: no 'embedding.weight' tensor")
    table = t["embedding.weight"].to(torch.float32)
    if not dim.isdigit() or int(dim) != table.shape[1]:
        raise ExtractError(
            f"{weights_path.name}: expected <config>_<dim>.safetensors with dim "
            f"{table.shape[1]} (the table's width)"
        )
    # The library looks for tokenizer/..., but ships (and caches) tokenizers/...
    tokenizer_json = folder / "tokenizers" / f"{config_name}_tokenizer_config.json"
    train = folder / "config" / "train" / f"{config_name}.toml"
    dims = None
    if train.is_file():
        trained = tomllib.loads(train.read_text()).get("matryoshka", {}).get("dims", [])
        dims = sorted(d for d in trained if d <= table.shape[1]) or None
    spec = ImportSpec(
        library="wordllama",
        version=_wordllama_version(folder),
        normalize=False,
        matryoshka_dims=dims,
    )
    source = _source("wordllama", folder, weights_path)
    return ImportedModel(table, tokenizer_json, spec, source, f"WordLlama {config_name}")


READERS: dict[str, Callable[[Path], ImportedModel]] = {
    "model2vec": read_model2vec,
    "sentence-transformers": read_sentence_transformers,
    "wordllama": read_wordllama,
}


# --- checkpoint ------------------------------------------------------------------------------


def check_options(args: argparse.Namespace, defaults: Callable[[str], object], kind: str) -> None:
    """Refuse LLM-extraction options set on the command line for an import (exit 2)."""
    given = [
        # --no-center, --no-add-special-tokens: the spelling that turned a default on off.
        f"--{'no-' if getattr(args, d) is False else ''}{d.replace('_', '-')}"
        for d in LLM_ONLY
        if getattr(args, d) != defaults(d)
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)}: LLM extraction only; a {kind} model is served as trained "
            "(its rows as stored, the library's tokenizer settings, no post-processing)"
        )


def build_checkpoint(model: ImportedModel, dtype: str, staging: Path) -> Checkpoint:
    from extract.write import tokenizer_spec, tool_versions

    table = model.table
    vocab, hidden = table.shape
    tokenizer = _tokenizer(model.tokenizer_json)
    tokenizer_dir = staging / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
    # Saved under the checkpoint's name whatever the library calls it (WordLlama:
    # *_tokenizer_config.json), unindented as extract/write.py's stage_tokenizer does.
    tokenizer.save(str(tokenizer_dir / TOKENIZER_NAME), pretty=False)
    n_tokens = tokenizer.get_vocab_size(with_added_tokens=True)
    if n_tokens > vocab:
        raise ExtractError(
            f"{model.tokenizer_json}: the tokenizer has {n_tokens} tokens but the table only "
            f"{vocab} rows"
        )
    tensors = {EMBED: table.to(getattr(torch, dtype))}
    drop = model.spec.drop_token_id
    if drop is not None:
        weights = torch.ones(vocab)
        weights[drop] = 0.0
        tensors[TOKEN_WEIGHTS] = weights
    manifest = Manifest(
        family=model.spec.library,
        architecture=model.architecture,
        vocab_size=vocab,
        hidden_size=hidden,
        dtype=dtype,
        norm=None,
        tokenizer=tokenizer_spec(tokenizer_dir, {}, add_special_tokens=False),
        source=model.source,
        imported=model.spec,
        extraction={
            "method": f"import {model.spec.library}",
            "dtype": dtype,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        tools=tool_versions((model.spec.library,)),
    )
    return Checkpoint(manifest, tensors, tokenizer_dir)


def alias_settings(spec: ImportSpec) -> dict[str, object]:
    """models_list.yaml keys that make an alias answer as the library does on long texts."""
    if spec.max_tokens is None:
        return {}
    return {"max_tokens": spec.max_tokens, "on_overflow": "truncate"}
