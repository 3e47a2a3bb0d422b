"""Family conventions, as data: how each causal-LM family turns token ids into layer-0 inputs,
and where its tensors are. One table, as mergekit's architecture JSON files are.

A family is chosen once, at extraction, and its conventions are written into the manifest,
so the server never guesses them from a model name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TensorNames:
    """Names of the tensors extraction reads, in a Hugging Face checkpoint."""

    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    # Decoder layer 0: its input norm, and the prefix of all its weights.
    layer0: str = "model.layers.0."
    layer0_norm: str = "model.layers.0.input_layernorm.weight"

    def norm(self, which: str) -> str:
        return self.final_norm if which == "final" else self.layer0_norm


# Every family we extract names them alike today (Gemma 3's multimodal checkpoints would not).
HF_DECODER = TensorNames()


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    # Gemma multiplies token embeddings by sqrt(hidden_size) before the first layer.
    sqrt_embed_scale: bool = False
    # Gemma's RMSNorm scales by (1 + w) instead of w.
    norm_offset: float = 0.0
    tensors: TensorNames = HF_DECODER

    def embed_scale(self, hidden_size: int) -> float:
        return math.sqrt(hidden_size) if self.sqrt_embed_scale else 1.0


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", ("LlamaForCausalLM",), ("llama",)),
        Family("mistral", ("MistralForCausalLM",), ("mistral",)),
        Family("qwen2", ("Qwen2ForCausalLM",), ("qwen2",)),
        Family("gemma", ("GemmaForCausalLM",), ("gemma",), True, 1.0),
        Family("gemma2", ("Gemma2ForCausalLM",), ("gemma2",), True, 1.0),
        Family("gemma3", ("Gemma3ForCausalLM",), ("gemma3_text", "gemma3"), True, 1.0),
    )
}


class UnknownFamilyError(ValueError):
    pass


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise UnknownFamilyError(f"unknown family {name!r} (known: {known})") from None


def detect_family(config: dict) -> Family:
    """Pick the family from a HF config.json dict: architectures first, then model_type."""
    archs = config.get("architectures") or []
    for fam in FAMILIES.values():
        if any(a in fam.architectures for a in archs):
            return fam
    model_type = config.get("model_type")
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = ", ".join(sorted(FAMILIES))
    raise UnknownFamilyError(
        f"cannot detect the model family (architectures={archs}, model_type={model_type!r});"
        f" pass --family, one of: {known}"
    )
