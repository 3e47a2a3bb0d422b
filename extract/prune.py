"""Read the two tensors a static checkpoint keeps out of mergekit's output, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

from extract.errors import ExtractError
from zeroth.families import HF_DECODER, TensorNames


def _shards(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index when sharded."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / shard for name, shard in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExtractError(f"{model_dir}: no .safetensors files")
    where = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            where.update(dict.fromkeys(f.keys(), file))
    return where


def read_embed_and_norm(
    model_dir: Path, norm: Literal["final", "layer0"], names: TensorNames = HF_DECODER
) -> tuple[torch.Tensor, torch.Tensor]:
    """embed_tokens [V, H] and the chosen RMSNorm weight [H], read lazily from safetensors."""
    where = _shards(model_dir)
    wanted = (names.embed, names.norm(norm))
    missing = [k for k in wanted if k not in where]
    if missing:
        raise ExtractError(
            f"{model_dir}: missing tensor(s) {', '.join(missing)} "
            "(not a Llama/Mistral/Qwen2/Gemma-style checkpoint?)"
        )
    tensors = []
    for key in wanted:
        with safe_open(str(where[key]), framework="pt") as f:
            tensors.append(f.get_tensor(key))
    embed, weight = tensors
    if embed.ndim != 2 or weight.ndim != 1 or weight.shape[0] != embed.shape[1]:
        raise ExtractError(
            f"{model_dir}: unexpected shapes {wanted[0]} {list(embed.shape)}, "
            f"{wanted[1]} {list(weight.shape)}"
        )
    return embed, weight
