"""The fast path equals a straightforward implementation, to 1e-6.

Fast: StaticEmbedder.embed_ids (folded table, flat ids + offsets, one embedding_bag, cut to
`dimensions` and normalised once), the server's response encoding (orjson on numpy rows, base64
of the float32 bytes, cut from one encoding of the matrix) and the tokenizer's tiktoken twin on
the served model. Reference: the unfolded per-input loop `reference_embed`, plain `json` of
Python float lists and the tokenizer's own pipeline. (That every route gets the same request
id, log line, metrics and error shape: tests/test_middleware.py.)
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zeroth.pooling
from zeroth.api.encode import base64_rows, embeddings_body
from zeroth.api.state import state_of
from zeroth.checkpoint import CENTER, COMPONENTS, Checkpoint
from zeroth.evaluation.tasks import load_stsb
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


@pytest.mark.parametrize("dims", [1, 3, 7])
def test_embed_ids_cuts_to_dims_then_normalises(model, dims: int) -> None:
    """Matryoshka-style, as OpenAI's `dimensions`: the first components of the unit vector,
    brought back to unit length; without normalize, the first components of the mean."""
    emb, ckpt = model
    batch = random_batches(emb.vocab_size, seed=2)[1]
    cut = reference_embed(ckpt, batch)[:, :dims]
    got = emb.embed_ids(batch, dims=dims)
    assert got.dtype == np.float32 and got.shape == (len(batch), dims)
    np.testing.assert_allclose(got, cut / np.linalg.norm(cut, axis=1, keepdims=True), atol=1e-6)
    raw = emb.embed_ids(batch, normalize=False)
    np.testing.assert_array_equal(emb.embed_ids(batch, normalize=False, dims=dims), raw[:, :dims])
    # The full size is no cut at all.
    np.testing.assert_array_equal(emb.embed_ids(batch, dims=emb.dim), emb.embed_ids(batch))


def test_server_normalises_once_after_the_cut(app, client, monkeypatch) -> None:
    """zeroth/api/pool.py leaves normalising to embed_ids: one pass over the cut vectors, and
    the answer is exactly embed_ids' (a second pass would be wasted work, and not bit-equal)."""
    calls: list[tuple[int, ...]] = []
    real = zeroth.pooling.l2_normalise

    def counted(vectors: np.ndarray) -> np.ndarray:
        calls.append(vectors.shape)
        return real(vectors)

    # Wherever it was imported, so that a second pass added anywhere is counted.
    for name, module in list(sys.modules.items()):
        if name.startswith("zeroth") and getattr(module, "l2_normalise", None) is real:
            monkeypatch.setattr(module, "l2_normalise", counted)
    texts = ["the cat sat on the mat", "hello world", "sea"]
    body = {"model": "tiny", "input": texts, "dimensions": 5, "encoding_format": "base64"}
    resp = client.post("/v1/embeddings", json=body)
    assert resp.status_code == 200, resp.get_json()
    assert calls == [(3, 5)]
    got = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in resp.json["data"]]
    )
    emb = state_of(app).registry.get("tiny").embedder
    np.testing.assert_array_equal(got, emb.embed_ids(emb.tokenize(texts), dims=5))


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


@pytest.mark.parametrize("n, dims", [(1, 24), (7, 576), (3, 7), (4, 8), (2, 1)])
def test_base64_rows_equal_per_row_encoding(n: int, dims: int) -> None:
    """One encoding of the whole matrix, cut per row (dims a multiple of 3), or one per row."""
    vectors = np.random.default_rng(dims).standard_normal((n, dims)).astype("<f4")
    got = [bytes(r) for r in base64_rows(vectors)]
    assert got == [base64.b64encode(row.tobytes()) for row in vectors]


@pytest.mark.parametrize("n, dims", [(1, 576), (33, 576), (3, 7), (2, 1)])
@pytest.mark.parametrize("model", ["m", 'we"ird\\name\u2028ü'])
def test_base64_body_is_the_orjson_document(n: int, dims: int, model: str) -> None:
    vectors = np.random.default_rng(n).standard_normal((n, dims)).astype("<f4")
    assert embeddings_body(vectors, "base64", model, 9) == orjson.dumps(
        plain_body(vectors, "base64", model, 9)
    )


# --- The tokenizer's tiktoken twin equals the tokenizer's own pipeline on the served model. ---

TRICKY = [
    "",
    " ",
    "   ",
    "a",
    "hello world",
    "Hello,   world!!  ",
    "it's we'll they've I'm you're he'd 'S 'LL",
    "x\x0by\x0cz\x1c\x1d\x1e\x1f\x7f\x00",
    "tabs\t\tand\nnewlines\n\n  trailing \n",
    "<|endoftext|>",
    "before<|endoftext|>after <s> <|im_start|>user",
    "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001f600",
    "mixed ascii then \u00e9",
    "12345 3.14 1,000 -7e10",
    "The quick brown fox jumps over the lazy dog. It's 2024; we'll see what they've done.",
    "def tokenize(self, texts):\n    return [t.lower() for t in texts]  # 42 == 6 * 7\n",
    "<html><body>Hello &amp; goodbye</body></html>\t\ttabs\r\nand CRLF line ends",
]

SMOLLM2 = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m"
STSB_DEV = Path(__file__).resolve().parents[2] / "shared/eval/stsbenchmark/sts-dev.csv"


@pytest.mark.skipif(not (SMOLLM2 / "manifest.json").is_file(), reason="no SmolLM2 (make smollm2)")
def test_twin_on_smollm2() -> None:
    """On a real model with a twin (SmolLM2's byte-level BPE), what the server uses (the twin)
    gives the ids of what it would use without one."""
    emb = StaticEmbedder.from_pretrained(SMOLLM2)
    plain = StaticEmbedder.from_pretrained(SMOLLM2, use_twin=False)
    assert emb.text.twin is not None, emb.text.twin_why
    assert plain.text.twin is None and plain.text.route.startswith("tokenizers")
    texts = TRICKY + [" ".join(WORDS) * 3, "A man is playing a flute.", "Obama's visit, 2012."]
    if STSB_DEV.is_file():
        s1, s2, _ = load_stsb(STSB_DEV)
        texts += s1 + s2
    want = emb.text.tokenize_plain(texts)
    assert emb.tokenize(texts) == want
    assert plain.tokenize(texts) == want
    np.testing.assert_array_equal(emb.encode(texts[1:]), plain.encode(texts[1:]))
