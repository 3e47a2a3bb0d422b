"""The checkpoint manifest: everything the server needs to turn token ids into vectors.

A checkpoint directory holds:
  manifest.json       this model, serialised
  model.safetensors   embed_tokens [V, H], norm [H] (absent when the manifest's norm is None);
                      optionally token_weights [V], center [H], components [K, H] (zeroth.fold)
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

    weighting: Literal["none", "sif", "usif"] = "none"
    sif_a: float | None = None
    # uSIF's a/(0.5a + p): a is derived from the frequencies and n, the sentence length.
    usif_a: float | None = None
    usif_n: float | None = None
    freq_source: str | None = None  # "prior:wordfreq", "corpus:<files>", ...
    center: bool = False
    remove_components: int = 0
    # piecewise: component i is removed in proportion lambda_i = s_i^2 / sum_j s_j^2 (uSIF);
    # the stored rows are scaled by sqrt(lambda_i), so zeroth.fold removes it unchanged.
    # None is full removal, left out of the JSON so servers older than this field still load it.
    component_removal: Literal["piecewise"] | None = None


# Static-embedding libraries whose trained models `python -m extract` imports.
LIBRARIES = ("model2vec", "sentence-transformers", "wordllama")
Library = Literal["model2vec", "sentence-transformers", "wordllama"]


class SourceSpec(_Strict):
    kind: Literal["hub", "hf_dir", "gguf"] | Library
    id: str
    revision: str | None = None
    # Of the GGUF file, or of an imported model's weights file (`file`, relative to `id`).
    sha256: str | None = None
    file: str | None = None


class ImportSpec(_Strict):
    """What the library an imported model came from does in its own encode, as read from the
    model's files at import. The checkpoint reproduces it: the table holds the rows its encode
    averages, the tokenizer spec its special-token setting, and token_weights is 0 for ids it
    leaves out (1 elsewhere). Limits the server applies per alias (max_tokens, normalize) are
    recorded here for `--alias` and for the reader."""

    library: Library
    # The library version that wrote the files, where they say; else the one installed at import.
    version: str | None = None
    pooling: Literal["mean"] = "mean"
    # Whether its encode returns unit vectors by default (the server's `normalize` decides).
    normalize: bool
    # It keeps the first max_tokens tokens of a text (None: no limit).
    max_tokens: int | None = None
    # It also cuts a text to this many characters before tokenising (model2vec).
    max_chars: int | None = None
    # It leaves the unknown token out of the mean (model2vec); this id has weight 0.
    drop_token_id: int | None = None
    # Prefix sizes the model was trained to be truncated to (Matryoshka), largest last.
    matryoshka_dims: list[int] | None = None
    # Set when the columns are PCA components, largest variance first (model2vec's
    # `dimensionality=` truncates them, as `dimensions` does).
    pca_dims: int | None = None


class AlignmentSpec(_Strict):
    """How an aligned table was fitted (python -m extract --teacher): rows are served as stored.

    The table X minimises ||B X - Y||^2 + align_lambda ||X - X0||^2 over the corpus (B its bag
    of tokens, Y the teacher's unit vectors, X0 the prior); see extract/align.py."""

    teacher: str  # the folder given
    teacher_sha256: str  # of its weight, config and tokenizer files
    corpus: list[str]  # file names
    corpus_sha256: str  # of the texts as read
    corpus_texts: int
    corpus_tokens: int
    align_lambda: float
    prior: Literal["table", "table+tokens"]
    dims: int
    # Teacher output dimensions that were zero on the whole corpus (kept at zero).
    dead_dims: list[int] = Field(default_factory=list)
    fit_seconds: float
    # Spearman x100 per lambda tried ("0.1": 80.2), when the eval data was present.
    stsb_dev_by_lambda: dict[str, float] | None = None


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
    # None: the rows are used as stored (imported static models: no scale, no RMSNorm).
    norm: NormSpec | None = None
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    source: SourceSpec | None = None
    imported: ImportSpec | None = None
    alignment: AlignmentSpec | None = None
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
