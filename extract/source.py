"""Resolve SOURCE (local HF directory, .gguf file or hub id) to a local HF checkpoint directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from extract.errors import ExtractError
from zeroth.manifest import SourceSpec

GGUF_MAGIC = b"GGUF"
# What a hub download fetches: the config, the tokenizer and safetensors weights, nothing else.
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "*.safetensors",
    "model.safetensors.index.json",
]


@dataclass
class ResolvedSource:
    hf_dir: Path
    spec: SourceSpec
    config: dict


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ExtractError(f"{hf_dir}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExtractError(f"{path}: unreadable: {_first_line(exc)}") from exc


def convert_gguf(gguf: Path, cache_dir: Path, log=print) -> tuple[Path, str]:
    """Dequantise a GGUF file into a HF directory cached by the file's sha256; reruns reuse it."""
    with open(gguf, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ExtractError(f"{gguf}: not a GGUF file (bad magic bytes)")
    log(f"hashing {gguf}")
    digest = sha256_file(gguf)
    out = cache_dir / "hf" / digest[:16]
    if (out / "config.json").is_file():
        log(f"using converted GGUF from {out}")
        return out, digest
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    log(f"converting {gguf.name} to safetensors (one-off, cached in {out})")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as exc:
            raise ExtractError(f"{gguf}: cannot read GGUF: {_first_line(exc)}") from exc
        # The weights are already dense fp32; transformers refuses to save "quantized" models.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        if not out.exists():
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, digest


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is meant as a local path.
    return source.startswith((".", "/", "~")) or source.endswith(".gguf") or source.count("/") > 1


def download_from_hub(repo_id: str, revision: str | None, log=print) -> tuple[Path, str | None]:
    from huggingface_hub import snapshot_download

    log(f"downloading {repo_id} from the Hugging Face hub (config, tokenizer, safetensors)")
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as exc:
        raise ExtractError(
            f"{repo_id!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    # snapshot_download returns .../snapshots/<commit>.
    return path, path.name if path.parent.name == "snapshots" else revision


def resolve_source(
    source: str, cache_dir: Path, revision: str | None = None, log=print
) -> ResolvedSource:
    path = Path(source).expanduser()
    if path.is_dir():
        return ResolvedSource(path, SourceSpec(kind="hf_dir", id=str(path)), read_config(path))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ExtractError(f"{path}: expected a .gguf file or a Hugging Face checkpoint dir")
        hf_dir, digest = convert_gguf(path, cache_dir, log)
        spec = SourceSpec(kind="gguf", id=str(path), sha256=digest)
        return ResolvedSource(hf_dir, spec, read_config(hf_dir))
    if _looks_like_path(source):
        raise ExtractError(f"{source}: no such file or directory")
    hf_dir, commit = download_from_hub(source, revision, log)
    return ResolvedSource(
        hf_dir, SourceSpec(kind="hub", id=source, revision=commit), read_config(hf_dir)
    )
