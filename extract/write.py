"""Assemble the static checkpoint and put it in place atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch
from tokenizers import Tokenizer

import zeroth
from extract.errors import ExtractError, UsageError
from zeroth.bpe_twin import fingerprint
from zeroth.checkpoint import EMBED, NORM, TOKENIZER_FILES, Checkpoint
from zeroth.families import Family
from zeroth.manifest import TOKENIZER_NAME, Manifest, NormSpec, SourceSpec, TokenizerSpec
from zeroth.tokenizer import TextTokenizer, load_tokenizer

TOOLS = ("mergekit", "transformers", "torch", "safetensors", "tokenizers")


def tool_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"zeroth": zeroth.__version__}
    for name in TOOLS + extra:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _token_id(tokenizer: Tokenizer, token) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    return tokenizer.token_to_id(token) if isinstance(token, str) else None


def _config_id(value) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def tokenizer_spec(tokenizer_dir: Path, config: dict, add_special_tokens: bool) -> TokenizerSpec:
    """Special token ids from tokenizer_config.json (as the tokenizer spells them), else config."""
    path = tokenizer_dir / TOKENIZER_NAME
    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:
        raise ExtractError(f"{path}: unreadable tokenizer: {exc}".splitlines()[0]) from exc
    tok_config_path = tokenizer_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
    ids = {}
    for kind in ("bos", "eos", "pad"):
        found = _token_id(tokenizer, tok_config.get(f"{kind}_token"))
        ids[f"{kind}_token_id"] = (
            found if found is not None else _config_id(config.get(f"{kind}_token_id"))
        )
    # The server then skips the twin's vocabulary check at load (start-up).
    twin = TextTokenizer(tokenizer, path, add_special_tokens).twin
    return TokenizerSpec(
        file=TOKENIZER_NAME,
        add_special_tokens=add_special_tokens,
        tiktoken_twin=fingerprint(path) if twin is not None else None,
        **ids,
    )


def stage_tokenizer(src: Path, dest: Path) -> Path:
    """Copy the tokenizer files, re-serialising tokenizer.json without indentation.

    The pretty-printed file is 2-2.5x larger (SmolLM2 3.5 -> 1.6 MB, Gemma 3 33 -> 14 MB);
    `tokenizers` reads both into the identical tokenizer.
    """
    dest.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and name != TOKENIZER_NAME:
            shutil.copy2(src / name, dest / name)
    path = src / TOKENIZER_NAME
    try:
        Tokenizer.from_file(str(path)).save(str(dest / TOKENIZER_NAME), pretty=False)
    except Exception as exc:
        raise ExtractError(f"{path}: unreadable tokenizer: {exc}".splitlines()[0]) from exc
    return dest


def tokenizer_size(tokenizer_dir: Path) -> int:
    return Tokenizer.from_file(str(tokenizer_dir / TOKENIZER_NAME)).get_vocab_size(
        with_added_tokens=True
    )


def norm_eps(config: dict) -> float:
    for key in ("rms_norm_eps", "layer_norm_eps", "norm_eps"):
        if isinstance(config.get(key), int | float):
            return float(config[key])
    raise ExtractError("config.json has no rms_norm_eps: cannot tell the RMSNorm epsilon")


def build_checkpoint(
    *,
    family: Family,
    config: dict,
    embed: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_source: str | None,
    dtype: str,
    tokenizer_dir: Path,
    add_special_tokens: bool,
    source: SourceSpec,
    extraction: dict,
) -> Checkpoint:
    vocab, hidden = embed.shape
    n_tokens = tokenizer_size(tokenizer_dir)
    if n_tokens > vocab:
        raise ExtractError(
            f"the tokenizer has {n_tokens} tokens but embed_tokens only {vocab} rows"
        )
    manifest = Manifest(
        family=family.name,
        architecture=(config.get("architectures") or [None])[0],
        vocab_size=vocab,
        hidden_size=hidden,
        dtype=dtype,
        # Rows computed at extraction (the layer-0 table) already hold the scale and norm.
        embed_scale=family.embed_scale(hidden) if norm_weight is not None else 1.0,
        norm=None
        if norm_weight is None
        else NormSpec(source=norm_source, eps=norm_eps(config), offset=family.norm_offset),
        tokenizer=tokenizer_spec(tokenizer_dir, config, add_special_tokens),
        source=source,
        extraction={**extraction, "created": datetime.now(UTC).isoformat(timespec="seconds")},
        tools=tool_versions(),
    )
    # Stored precision from the start, so postprocessing sees the table the server will load.
    tensors = {EMBED: embed.to(getattr(torch, dtype))}
    if norm_weight is not None:
        tensors[NORM] = norm_weight.to(torch.float32)
    return Checkpoint(manifest, tensors, tokenizer_dir)


@contextmanager
def staging_dir(out: Path):
    """A scratch dir beside `out` (same filesystem: the final rename is atomic); always removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UsageError(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")


def _make_readable(directory: Path) -> None:
    """Temp files are created 0600; a checkpoint should be as readable as any file one writes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def publish(built: Path, out: Path, staging: Path, force: bool) -> None:
    """Move the finished checkpoint to `out`, replacing an old one only with --force."""
    check_output(out, force)
    _make_readable(built)
    if out.exists():
        # Move the old one aside first; it is deleted with the staging dir.
        os.replace(out, staging / "previous")
    os.replace(built, out)
