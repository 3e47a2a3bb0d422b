"""Extraction from the real GGUF models (SmolLM2 135M, Gemma 3 270M) against the full HF model.

The GGUF -> safetensors conversion is cached in .cache/hf/ by sha256, so only the first run
pays for it (about 30 s for SmolLM2, 1-2 min for Gemma 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from extract.cli import main
from extract.fetch import fetch_gemma3, fetch_smollm2
from extract.source import convert_gguf
from tests.test_extract import RAW, hf_pooled
from zeroth.bpe_twin import fingerprint
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


def test_smollm2_default_command(smollm2_gguf, tmp_path):
    out = tmp_path / "models" / "smollm2-135m"
    models_list = tmp_path / "models_list.yaml"
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
            *RAW,
        ]
    )
    m = Manifest.read(out)
    assert (m.family, m.vocab_size, m.hidden_size, m.norm.source) == ("llama", 49152, 576, "final")
    assert m.source.kind == "gguf" and len(m.source.sha256) == 64
    assert m.tokenizer.bos_token_id == 1 and m.tokenizer.eos_token_id == 2
    # Its tiktoken twin passed the vocabulary check here; loading trusts that record.
    assert m.tokenizer.tiktoken_twin == fingerprint(out / "tokenizer.json")
    assert "at extraction" in StaticEmbedder.from_pretrained(out).text.twin_why
    models = yaml.safe_load(models_list.read_text())["models"]
    assert models["text-embedding-3-small"]["path"] == "models/smollm2-135m"
    check_against_full_model(smollm2_gguf, out, "final")
    assert m.openvino.weights == "fp32" and m.openvino.max_abs_diff <= 1e-4

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
            *RAW,
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
