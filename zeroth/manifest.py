"""The checkpoint manifest: everything the server needs to turn token ids into vectors.

A checkpoint directory holds:
  manifest.json       this model, serialised
  model.safetensors   embed_tokens [V, H], norm [H]; optionally token_weights [V],
                      center [H], components [K, H] (see zeroth.fold)
  tokenizer.json      a `tokenizers` fast tokenizer (plus the HF tokenizer side files)
  openvino/           optional IR of the pooling graph
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "zeroth-static/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormSpec(_Strict):
    kind: Literal["rms"] = "rms"
    # Which RMSNorm of the source model the weight came from.
    source: Literal["final", "layer0"]
    eps: float
    # y = x * rsqrt(mean(x^2) + eps) * (offset + w); Gemma uses offset 1.
    offset: float = 0.0


class TokenizerSpec(_Strict):
    file: str = TOKENIZER_NAME
    add_special_tokens: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Set when the tokenizer's tiktoken twin passed its vocabulary check at extraction: the
    # fingerprint (file hash, library versions) it passed for (zeroth.bpe_twin.fingerprint).
    tiktoken_twin: dict[str, str] | None = None


class PostprocessSpec(_Strict):
    """Training-free quality levers, folded into the table at load time (zeroth.fold)."""

    weighting: Literal["none", "sif"] = "none"
    sif_a: float | None = None
    freq_source: str | None = None  # "prior:wordfreq", "corpus:<files>", ...
    center: bool = False
    remove_components: int = 0


class SourceSpec(_Strict):
    kind: Literal["hub", "hf_dir", "gguf"]
    id: str
    revision: str | None = None
    sha256: str | None = None


class OpenVINOSpec(_Strict):
    xml: str
    weights: Literal["fp32", "fp16", "int8"]
    max_abs_diff: float
    min_cosine: float


class Manifest(_Strict):
    format: str = FORMAT
    family: str
    architecture: str | None = None
    vocab_size: int
    hidden_size: int
    dtype: Literal["float32", "float16", "bfloat16"]
    embed_scale: float = 1.0
    norm: NormSpec
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    source: SourceSpec | None = None
    extraction: dict = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict)
    openvino: OpenVINOSpec | None = None
    quality: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        return cls.model_validate(json.loads(path.read_text()))

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2, exclude_none=True) + "\n")
        return path
