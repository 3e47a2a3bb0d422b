"""The fast path equals a straightforward implementation, to 1e-6.

Fast: StaticEmbedder.embed_ids (folded table, flat ids + offsets, one embedding_bag) and the
server's response encoding (orjson on numpy rows, base64 of the float32 bytes). Reference: the
unfolded per-input loop `reference_embed` and plain `json` of Python float lists.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeroth.api.encode import embeddings_body
from zeroth.checkpoint import CENTER, COMPONENTS, Checkpoint
from zeroth.model import StaticEmbedder, reference_embed

# Words the tiny tokenizer knows, and one it does not (<unk>).
WORDS = "the cat sat on mat dog ran hello world blue zebra".split()


@pytest.fixture(scope="module")
def projected_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt_weighted: Path) -> Path:
    """The weighted tiny model plus a centre and two removed components: every folded step."""
    ckpt = Checkpoint.from_pretrained(tiny_ckpt_weighted)
    gen = torch.Generator().manual_seed(7)
    dim = ckpt.manifest.hidden_size
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=gen))
    ckpt.tensors[CENTER] = 0.1 * torch.randn(dim, generator=gen)
    ckpt.tensors[COMPONENTS] = q.T.contiguous()
    out = tmp_path_factory.mktemp("fastpath") / "projected"
    ckpt.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["plain", "weighted", "projected"])
def model(request, tiny_ckpt, tiny_ckpt_weighted, projected_ckpt):
    path = {"plain": tiny_ckpt, "weighted": tiny_ckpt_weighted, "projected": projected_ckpt}[
        request.param
    ]
    return StaticEmbedder.from_pretrained(path), Checkpoint.from_pretrained(path)


def random_batches(vocab: int, seed: int = 0) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    out = [
        [[int(rng.integers(vocab))]],  # a single one-token input
        [list(map(int, rng.integers(0, vocab, n))) for n in range(1, 41)],  # lengths 1..40
        [[3, 3, 3, 3], [3], [5, 3, 5, 3, 5]],  # repeated ids
        [[vocab - 1] * 7, [0, vocab - 1]],  # the first and last rows of the table
    ]
    return out


def test_embed_ids_matches_reference(model) -> None:
    emb, ckpt = model
    for batch in random_batches(emb.vocab_size):
        got = emb.embed_ids(batch)
        assert got.dtype == np.float32 and got.shape == (len(batch), emb.dim)
        np.testing.assert_allclose(got, reference_embed(ckpt, batch), atol=1e-6)


def test_batch_equals_one_at_a_time(model) -> None:
    emb, _ = model
    batch = random_batches(emb.vocab_size, seed=1)[1]
    together = emb.embed_ids(batch)
    alone = np.concatenate([emb.embed_ids([row]) for row in batch])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_encode_is_tokenize_then_reference(model) -> None:
    emb, ckpt = model
    texts = ["the cat sat on the mat", "hello", "hello hello hello", "a b c d e f g h i j k"]
    np.testing.assert_allclose(
        emb.encode(texts), reference_embed(ckpt, emb.tokenize(texts)), atol=1e-6
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join),
        min_size=1,
        max_size=16,
    )
)
def test_random_texts_match_reference(tiny_ckpt_weighted, texts) -> None:
    emb = _embedder(tiny_ckpt_weighted)
    ckpt = _checkpoint(tiny_ckpt_weighted)
    np.testing.assert_allclose(
        emb.encode(texts), reference_embed(ckpt, emb.tokenize(texts)), atol=1e-6
    )


_CACHE: dict = {}


def _embedder(path: Path) -> StaticEmbedder:
    return _CACHE.setdefault(("emb", path), StaticEmbedder.from_pretrained(path))


def _checkpoint(path: Path) -> Checkpoint:
    return _CACHE.setdefault(("ckpt", path), Checkpoint.from_pretrained(path))


def plain_body(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> dict:
    """What a straightforward server sends: Python float lists, or struct-packed base64."""
    rows: list = [list(map(float, v)) for v in vectors]
    if encoding_format == "base64":
        rows = [base64.b64encode(np.array(r, dtype="<f4").tobytes()).decode("ascii") for r in rows]
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@pytest.mark.parametrize("n", [1, 2, 33])
def test_float_body_equals_plain_json(n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, 24)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fast = json.loads(embeddings_body(vectors, "float", "m", 17))
    plain = json.loads(json.dumps(plain_body(vectors, "float", "m", 17)))
    assert fast.keys() == plain.keys() and fast["usage"] == plain["usage"]
    assert [d["index"] for d in fast["data"]] == list(range(n))
    got = np.array([d["embedding"] for d in fast["data"]])
    want = np.array([d["embedding"] for d in plain["data"]])
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Shortest round-trip float32 text must parse back to the very same float32 values.
    np.testing.assert_array_equal(got.astype("<f4"), vectors)


@pytest.mark.parametrize("n", [1, 5])
def test_base64_body_equals_plain_encoding(n: int) -> None:
    vectors = np.random.default_rng(n).standard_normal((n, 24)).astype("<f4")
    fast = json.loads(embeddings_body(vectors, "base64", "m", 3))
    plain = plain_body(vectors, "base64", "m", 3)
    assert fast == plain
