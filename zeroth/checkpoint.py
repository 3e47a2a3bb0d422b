"""A static checkpoint on disk: manifest + safetensors + tokenizer, saved and loaded alike."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zeroth.fold import rms_normalise
from zeroth.manifest import MANIFEST_NAME, WEIGHTS_NAME, Manifest

# Tensor names inside model.safetensors.
EMBED = "embed_tokens"
NORM = "norm"
TOKEN_WEIGHTS = "token_weights"
CENTER = "center"
COMPONENTS = "components"
OPTIONAL_TENSORS = (TOKEN_WEIGHTS, CENTER, COMPONENTS)
# The per-dimension statistics a standardised layer-0 table was built with ([H] each). Serving
# never reads them (the rows already hold them); the parity check does.
LAYER0_MEAN = "layer0_mean"
LAYER0_STD = "layer0_std"

# Tokenizer side files copied along with tokenizer.json when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)


class CheckpointError(ValueError):
    pass


@dataclass
class Checkpoint:
    manifest: Manifest
    tensors: dict[str, torch.Tensor]
    # Where the tokenizer files live (a checkpoint dir or an extraction work dir).
    tokenizer_dir: Path
    path: Path | None = field(default=None)

    @property
    def embed(self) -> torch.Tensor:
        return self.tensors[EMBED]

    @property
    def norm_weight(self) -> torch.Tensor:
        return self.tensors[NORM]

    def optional(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    def token_rows(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Each token's vector before post-processing, in fp32 (all rows, or `rows`): after the
        family's embedding scale and RMSNorm, or as stored when the manifest has no norm."""
        m = self.manifest
        embed = self.embed if rows is None else self.embed[rows]
        if m.norm is None:
            return embed.to(torch.float32)
        return rms_normalise(embed, self.norm_weight, m.norm.eps, m.embed_scale, m.norm.offset)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        if not (path / MANIFEST_NAME).is_file():
            raise CheckpointError(f"{path}: no {MANIFEST_NAME} (not a zeroth checkpoint)")
        try:
            manifest = Manifest.read(path)
        except Exception as exc:  # pydantic or JSON errors, reported in one line
            raise CheckpointError(f"{path}/{MANIFEST_NAME}: {exc}".splitlines()[0]) from exc
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{path}: missing {WEIGHTS_NAME}")
        tensors = load_file(str(weights))
        for name in (EMBED, NORM) if manifest.norm is not None else (EMBED,):
            if name not in tensors:
                raise CheckpointError(f"{weights}: missing tensor {name!r}")
        rows, dim = tensors[EMBED].shape
        if (rows, dim) != (manifest.vocab_size, manifest.hidden_size):
            raise CheckpointError(
                f"{weights}: embed_tokens is {rows}x{dim}, manifest says "
                f"{manifest.vocab_size}x{manifest.hidden_size}"
            )
        if not (path / manifest.tokenizer.file).is_file():
            raise CheckpointError(f"{path}: missing {manifest.tokenizer.file}")
        return cls(manifest, tensors, path, path)

    def save_pretrained(self, path: str | Path) -> None:
        """Write into an existing (normally temporary) directory; callers make it atomic."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        dtype = getattr(torch, self.manifest.dtype)
        out = {
            name: t.to(dtype if name == EMBED else torch.float32).contiguous()
            for name, t in self.tensors.items()
        }
        save_file(out, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            src = self.tokenizer_dir / name
            if src.is_file() and src.resolve() != (path / name).resolve():
                shutil.copy2(src, path / name)
        self.manifest.write(path)
        self.path = path
