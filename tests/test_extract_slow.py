"""Extraction from the real GGUF models (SmolLM2 135M, Gemma 3 270M) against the full HF model.

The default build (layer-0 table, SIF prior, centre, 4 components) must keep its measured
quality: STS-B dev >= 68 through the harness (the README's Quality section has the whole row).

The GGUF -> safetensors conversion is cached in .cache/hf/ by sha256, so only the first run
pays for it (about 30 s for SmolLM2, 1-2 min for Gemma 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from extract.cli import main
from extract.fetch import fetch_gemma3, fetch_smollm2
from extract.source import convert_gguf
from tests.harness import eval_dir
from tests.test_extract import RAW, hf_pooled
from zeroth.bpe_twin import fingerprint
from zeroth.checkpoint import Checkpoint
from zeroth.evaluation.harness import checkpoint_encoder, evaluate
from zeroth.evaluation.parity import reference_vectors
from zeroth.manifest import Manifest
from zeroth.model import StaticEmbedder

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
SENTENCES = [
    "The capital of France is Paris.",
    "Static embeddings are cut from the first layer of a language model.",
    "a",
    "Quels sont les meilleurs restaurants près de la gare ?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return fetch_smollm2(CACHE)


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    return fetch_gemma3(CACHE)


def extract(args: list) -> None:
    assert main([str(a) for a in args] + ["-q", "--cache-dir", str(CACHE)]) == 0


def check_against_full_model(gguf: Path, ckpt: Path, norm: str) -> None:
    embedder = StaticEmbedder.from_pretrained(ckpt)
    batch = embedder.tokenize(SENTENCES)
    got = embedder.embed_ids(batch)
    hf_dir, _ = convert_gguf(gguf, CACHE, log=lambda _: None)
    want = hf_pooled(hf_dir, norm, batch)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def check_parity(gguf: Path, ckpt: Path) -> None:
    """Served vectors vs the parity check's reference: the full model run on each token alone
    (layer 0's hidden state), post-processed explicitly as the manifest records."""
    embedder = StaticEmbedder.from_pretrained(ckpt)
    batch = embedder.tokenize(SENTENCES)
    hf_dir, _ = convert_gguf(gguf, CACHE, log=lambda _: None)
    full = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    want = reference_vectors(Checkpoint.from_pretrained(ckpt), full, batch)
    np.testing.assert_allclose(embedder.embed_ids(batch), want, rtol=0, atol=1e-5)


@pytest.fixture(scope="session")
def smollm2_default(smollm2_gguf, tmp_path_factory) -> tuple[Path, Path]:
    """The default command (plain `python -m extract GGUF --out DIR`), with an alias and the
    OpenVINO IR."""
    root = tmp_path_factory.mktemp("default")
    out = root / "models" / "smollm2-135m"
    models_list = root / "models_list.yaml"
    extract(
        [
            smollm2_gguf,
            "--out",
            out,
            "--alias",
            "text-embedding-3-small",
            "--models-list",
            models_list,
            "--openvino",
            "--eval-dir",
            eval_dir(),
        ]
    )
    return out, models_list


def test_smollm2_default_command(smollm2_gguf, smollm2_default):
    out, models_list = smollm2_default
    m = Manifest.read(out)
    assert (m.family, m.vocab_size, m.hidden_size, m.norm) == ("llama", 49152, 576, None)
    assert m.extraction["table"].startswith("layer0") and m.extraction["layer_range"] == [0, 1]
    spec = m.postprocess
    assert (spec.weighting, spec.center, spec.remove_components) == ("sif", True, 4)
    assert m.source.kind == "gguf" and len(m.source.sha256) == 64
    assert m.tokenizer.bos_token_id == 1 and m.tokenizer.eos_token_id == 2
    # Its tiktoken twin passed the vocabulary check here; loading trusts that record.
    assert m.tokenizer.tiktoken_twin == fingerprint(out / "tokenizer.json")
    assert "at extraction" in StaticEmbedder.from_pretrained(out).text.twin_why
    models = yaml.safe_load(models_list.read_text())["models"]
    assert models["text-embedding-3-small"]["path"] == "models/smollm2-135m"
    check_parity(smollm2_gguf, out)
    assert m.openvino.weights == "fp32" and m.openvino.max_abs_diff <= 1e-4
    # The measured quality of the default build (today's embed-table default scored 64.0).
    stsb = evaluate(checkpoint_encoder(out, progress=False), ["stsb"], eval_dir(), progress=False)
    assert stsb["stsb"]["spearman"] >= 68, stsb
    assert m.quality["stsb_dev_spearman"] == pytest.approx(stsb["stsb"]["spearman"], abs=0.01)


def test_smollm2_fp16_and_int8(smollm2_gguf, smollm2_default, tmp_path):
    out, _ = smollm2_default
    half = tmp_path / "fp16"
    extract(
        [
            smollm2_gguf,
            "--out",
            half,
            "--dtype",
            "float16",
            "--openvino",
            "--ov-weights",
            "int8",
            "--eval-dir",
            "/nonexistent",
        ]
    )
    size = sum(f.stat().st_size for f in half.iterdir() if f.is_file())  # without the IR
    assert size <= 60e6, size
    assert Manifest.read(half).openvino.min_cosine >= 0.99
    reference = StaticEmbedder.from_pretrained(out).encode(SENTENCES)
    for backend in ("torch", "openvino"):  # fp16 table; int8 IR of it
        vectors = StaticEmbedder.from_pretrained(half, backend=backend).encode(SENTENCES)
        assert (vectors * reference).sum(1).min() >= 0.99


def test_gemma3_layer0(gemma3_gguf, tmp_path):
    out = tmp_path / "gemma3"
    extract([gemma3_gguf, "--out", out, "--norm", "layer0", *RAW])
    m = Manifest.read(out)
    assert (m.family, m.vocab_size, m.hidden_size) == ("gemma3", 262144, 640)
    assert m.norm.offset == 1.0 and m.embed_scale == pytest.approx(640**0.5)
    assert m.tokenizer.tiktoken_twin is None  # SentencePiece: no twin
    embedder = StaticEmbedder.from_pretrained(out)
    assert embedder.tokenize(["hi"])[0][0] == m.tokenizer.bos_token_id == 2  # Gemma adds <bos>
    check_against_full_model(gemma3_gguf, out, "layer0")
