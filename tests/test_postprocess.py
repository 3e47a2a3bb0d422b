"""Quality post-processing: frequency counting, SIF weights, and exact folding into the table."""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from extract import postprocess
from zeroth import freq
from zeroth.checkpoint import CENTER, COMPONENTS, TOKEN_WEIGHTS, Checkpoint
from zeroth.manifest import Manifest, NormSpec, TokenizerSpec
from zeroth.model import StaticEmbedder, reference_embed

WORDS = (
    "the of and a to in is was cat dog sat ran on mat log bird flew over tree sea "
    "quick brown lazy red blue green small big old new very not"
).split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
BOS = 1
UNK = 3
HIDDEN = 16
CORPUS = [
    "the cat sat on the mat",
    "a quick brown dog ran over the log",
    "the old bird flew over a big green tree",
    "the sea is very blue and not small",
    "a lazy red dog sat on a mat",
    "the new cat was not quick",
]
TEXTS = ["the cat sat", "a big blue sea", "lazy", "the the the dog", "zebra unknown words"]


def make_tokenizer(add_bos: bool) -> Tokenizer:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS)]
        )
    return tok


def make_checkpoint(
    directory: Path, add_bos: bool = False, offset: float = 0.0, seed: int = 0
) -> Checkpoint:
    """A random tiny checkpoint (norm weight, scale and offset all non-trivial) saved on disk."""
    directory.mkdir(parents=True, exist_ok=True)
    make_tokenizer(add_bos).save(str(directory / "tokenizer.json"))
    gen = torch.Generator().manual_seed(seed)
    vocab = len(SPECIALS) + len(WORDS)
    # A shared offset makes a strong common direction, as real embedding tables have.
    embed = torch.randn(vocab, HIDDEN, generator=gen) + 0.7 * torch.randn(HIDDEN, generator=gen)
    manifest = Manifest(
        family="gemma3" if offset else "llama",
        vocab_size=vocab,
        hidden_size=HIDDEN,
        dtype="float32",
        embed_scale=HIDDEN**0.5 if offset else 1.0,
        norm=NormSpec(source="final", eps=1e-6, offset=offset),
        tokenizer=TokenizerSpec(add_special_tokens=True, bos_token_id=BOS if add_bos else None),
    )
    norm = 0.5 + torch.rand(HIDDEN, generator=gen)
    ckpt = Checkpoint(manifest, {"embed_tokens": embed, "norm": norm}, directory)
    ckpt.save_pretrained(directory)
    return Checkpoint.from_pretrained(directory)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    postprocess.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def small_prior(monkeypatch):
    # The real prior tokenises 200k words; 5k keep the tests fast and cover the same code.
    monkeypatch.setattr(postprocess, "PRIOR_WORDS", 5000)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n\n")
    return path


def explicit_embed(ckpt: Checkpoint, texts: list[str]) -> np.ndarray:
    """The unfolded computation written out in float64: normalise rows, weighted mean,
    subtract the centre, remove the components, L2-normalise."""
    m = ckpt.manifest
    tok = make_tokenizer(m.tokenizer.bos_token_id is not None)
    e = ckpt.embed.double().numpy() * m.embed_scale
    w = ckpt.norm_weight.double().numpy()
    rows = e / np.sqrt((e**2).mean(1, keepdims=True) + m.norm.eps) * (m.norm.offset + w)
    a = ckpt.optional(TOKEN_WEIGHTS)
    c = ckpt.optional(CENTER)
    u = ckpt.optional(COMPONENTS)
    out = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=m.tokenizer.add_special_tokens).ids
        weights = np.ones(len(ids)) if a is None else a.double().numpy()[ids]
        v = (weights[:, None] * rows[ids]).sum(0) / weights.sum()
        if c is not None:
            v = v - c.double().numpy()
        if u is not None:
            un = u.double().numpy()
            v = v - un.T @ (un @ v)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


COMBOS = list(itertools.product(["none", "sif"], [True, False], [0, 1, 3]))


@pytest.mark.parametrize("source", ["prior", "corpus"])
@pytest.mark.parametrize("add_bos,offset", [(False, 0.0), (True, 1.0)])
def test_folded_vectors_equal_unfolded_computation(tmp_path, corpus_file, source, add_bos, offset):
    make_checkpoint(tmp_path / "base", add_bos, offset)
    texts = TEXTS + CORPUS
    for weighting, center, k in COMBOS:
        argv = ["--weighting", weighting, "--remove-components", str(k), "--eval-dir", "/nope"]
        argv += ["--center" if center else "--no-center"]
        if source == "corpus":
            argv += ["--corpus", str(corpus_file)]
        ckpt = Checkpoint.from_pretrained(tmp_path / "base")
        postprocess.apply(ckpt, parse(argv))
        out = tmp_path / f"{source}-{weighting}-{center}-{k}"
        ckpt.save_pretrained(out)
        served = StaticEmbedder.from_pretrained(out).encode(texts)
        saved = Checkpoint.from_pretrained(out)
        assert saved.manifest.postprocess.weighting == weighting
        assert saved.manifest.postprocess.center == center
        assert saved.manifest.postprocess.remove_components == k
        assert (TOKEN_WEIGHTS in saved.tensors) == (weighting == "sif")
        assert (CENTER in saved.tensors) == center
        assert (COMPONENTS in saved.tensors) == (k > 0)
        expected = explicit_embed(saved, texts)
        np.testing.assert_allclose(served, expected, atol=1e-5, err_msg=str(argv))
        ids = StaticEmbedder.from_pretrained(out).tokenize(texts)
        np.testing.assert_allclose(served, reference_embed(saved, ids), atol=1e-5)
        # The options must change something: the seed vectors differ from these.
        if (weighting, center, k) != ("none", False, 0):
            seed = StaticEmbedder.from_pretrained(tmp_path / "base").encode(texts)
            assert np.abs(seed - served).max() > 1e-3


def test_seed_method_adds_nothing(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c")
    postprocess.apply(
        ckpt, parse(["--weighting", "none", "--no-center", "--remove-components", "0"])
    )
    assert set(ckpt.tensors) == {"embed_tokens", "norm"}
    assert ckpt.manifest.postprocess.freq_source is None


def test_apply_replaces_previous_tensors(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c")
    postprocess.apply(ckpt, parse(["--remove-components", "3"]))
    assert ckpt.tensors[COMPONENTS].shape == (3, HIDDEN)
    postprocess.apply(
        ckpt, parse(["--weighting", "none", "--no-center", "--remove-components", "0"])
    )
    assert set(ckpt.tensors) == {"embed_tokens", "norm"}


def test_default_is_sif_prior_centred_with_components(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c")
    postprocess.apply(ckpt, parse([]))
    spec = ckpt.manifest.postprocess
    assert spec.weighting == "sif" and spec.center
    assert spec.remove_components == postprocess.DEFAULT_COMPONENTS > 0
    assert spec.sif_a == postprocess.DEFAULT_SIF_A
    assert spec.freq_source.startswith("prior:wordfreq")
    # The default's record has only the fields servers before uSIF know (strict schema).
    written = set(spec.model_dump(exclude_none=True))
    assert written == {"weighting", "sif_a", "freq_source", "center", "remove_components"}


@pytest.mark.parametrize("k", [1, 3, HIDDEN])
@pytest.mark.parametrize("source", ["prior", "corpus"])
def test_components_are_orthonormal(tmp_path, corpus_file, k, source):
    ckpt = make_checkpoint(tmp_path / "c")
    argv = ["--remove-components", str(k)] + (["--corpus", str(corpus_file)] * (source == "corpus"))
    postprocess.apply(ckpt, parse(argv))
    u = ckpt.tensors[COMPONENTS].double()
    np.testing.assert_allclose((u @ u.T).numpy(), np.eye(k), atol=1e-5)


def pooled_corpus_vectors(
    ckpt: Checkpoint, weights: np.ndarray | None, docs: list[str] = CORPUS
) -> np.ndarray:
    tok = make_tokenizer(False)
    m = ckpt.manifest
    e = ckpt.embed.double().numpy()
    rows = e / np.sqrt((e**2).mean(1, keepdims=True) + m.norm.eps) * ckpt.norm_weight.numpy()
    out = []
    for doc in docs:
        ids = tok.encode(doc).ids
        a = np.ones(len(ids)) if weights is None else weights[ids]
        out.append((a[:, None] * rows[ids]).sum(0) / a.sum())
    return np.array(out)


@pytest.mark.parametrize("center", [True, False])
def test_corpus_centre_and_components_come_from_pooled_documents(tmp_path, corpus_file, center):
    ckpt = make_checkpoint(tmp_path / "c")
    argv = ["--corpus", str(corpus_file), "--remove-components", "2", "--sif-a", "0.05"]
    postprocess.apply(ckpt, parse(argv + ["--center" if center else "--no-center"]))
    weights = ckpt.tensors[TOKEN_WEIGHTS].double().numpy()
    pooled = pooled_corpus_vectors(ckpt, weights)
    mean = pooled.mean(0)
    if center:
        np.testing.assert_allclose(ckpt.tensors[CENTER].numpy(), mean, atol=1e-5)
        pooled = pooled - mean
    # The removed subspace is the top-2 right singular subspace of the (centred) pooled matrix.
    _, _, vt = np.linalg.svd(pooled, full_matrices=False)
    u = ckpt.tensors[COMPONENTS].double().numpy()
    np.testing.assert_allclose(u.T @ u, vt[:2].T @ vt[:2], atol=1e-4)


def test_prior_centre_is_the_expected_pooled_vector(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c")
    postprocess.apply(ckpt, parse(["--remove-components", "0"]))
    m = ckpt.manifest
    tok = make_tokenizer(False)
    p = freq.probabilities(freq.prior_counts(tok, m.vocab_size, n_words=postprocess.PRIOR_WORDS))
    a = freq.sif_weights(p, postprocess.DEFAULT_SIF_A)
    np.testing.assert_allclose(ckpt.tensors[TOKEN_WEIGHTS].numpy(), a, rtol=1e-6)
    q = p * a / (p * a).sum()
    e = ckpt.embed.double().numpy()
    rows = e / np.sqrt((e**2).mean(1, keepdims=True) + m.norm.eps) * ckpt.norm_weight.numpy()
    np.testing.assert_allclose(ckpt.tensors[CENTER].numpy(), q @ rows, atol=1e-5)


def test_usif_weights_follow_the_papers_definition():
    """uSIF on a toy word-count table, written out as the reference code (kawine/usif) does."""
    counts = {"the": 500, "of": 200, "cat": 30, "sat": 20, "mat": 5, "zebra": 1, "quark": 1}
    vocab = ["<pad>", *counts, "unseen"]  # <pad> and "unseen" have no count
    p = freq.probabilities(np.array([counts.get(w, 0) for w in vocab], dtype=float))
    for n in (1, 5):
        prob = {w: c / sum(counts.values()) for w, c in counts.items()}
        size = len(prob)
        threshold = 1 - (1 - 1 / size) ** n
        alpha = len([w for w in prob if prob[w] > threshold]) / size
        a = (1 - alpha) / (alpha * 0.5 * size)
        expected = [a / (0.5 * a + prob.get(w, min(prob.values()))) for w in vocab]
        weights, got_a = freq.usif_weights(p, n)
        assert got_a == pytest.approx(a)
        np.testing.assert_allclose(weights, expected, rtol=1e-12)
    # A longer walk raises the threshold: fewer tokens count as frequent, so a grows.
    assert freq.usif_weights(p, 5)[1] > freq.usif_weights(p, 1)[1]
    with pytest.raises(ValueError, match="n must be > 0"):
        freq.usif_weights(p, 0)
    with pytest.raises(ValueError, match="no token is more frequent"):
        freq.usif_weights(p, 11)


@pytest.mark.parametrize("center", [True, False])
def test_piecewise_removal_folds_exactly(tmp_path, center):
    """The stored rows scaled by sqrt(lambda_i) make the folded table remove
    sum_i lambda_i (v . u_i) u_i, lambda_i = s_i^2 / sum_j s_j^2 over the K kept."""
    k = 3
    # uSIF needs a token more frequent than 1 - (1 - 1/|V|)^n: "the", as in real text.
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("".join(f"the the {doc}\n" for doc in CORPUS))
    base = make_checkpoint(tmp_path / "c")
    argv = ["--corpus", str(corpus_file), "--weighting", "usif", "--remove-components", str(k)]
    argv += ["--component-removal", "piecewise", "--eval-dir", "/nope"]
    argv += ["--center" if center else "--no-center"]
    postprocess.apply(base, parse(argv))
    out = tmp_path / "piecewise"
    base.save_pretrained(out)
    spec = Manifest.read(out).postprocess
    assert (spec.weighting, spec.component_removal, spec.sif_a) == ("usif", "piecewise", None)
    tok = make_tokenizer(False)
    docs = corpus_file.read_text().splitlines()
    n_tokens = sum(len(tok.encode(d).ids) for d in docs) / len(docs)
    assert spec.usif_n == pytest.approx(n_tokens, abs=0.01)
    counts, _ = freq.corpus_counts(tok, base.manifest.vocab_size, [corpus_file], progress=False)
    weights, a = freq.usif_weights(freq.probabilities(counts), spec.usif_n)
    assert spec.usif_a == pytest.approx(a)
    np.testing.assert_allclose(base.tensors[TOKEN_WEIGHTS].numpy(), weights, rtol=1e-6)

    pooled = pooled_corpus_vectors(base, weights, docs)
    mean = pooled.mean(0) if center else np.zeros(HIDDEN)
    _, s, vt = np.linalg.svd(pooled - mean, full_matrices=False)
    lam = s[:k] ** 2 / (s[:k] ** 2).sum()
    e = base.embed.double().numpy()
    rows = e / np.sqrt((e**2).mean(1, keepdims=True) + 1e-6) * base.norm_weight.double().numpy()
    expected, full = [], []
    for text in TEXTS:
        ids = tok.encode(text).ids
        v = (weights[ids, None] * rows[ids]).sum(0) / weights[ids].sum() - mean
        removed = v - sum(lam[i] * (v @ vt[i]) * vt[i] for i in range(k))
        expected.append(removed / np.linalg.norm(removed))
        whole = v - vt[:k].T @ (vt[:k] @ v)
        full.append(whole / np.linalg.norm(whole))
    served = StaticEmbedder.from_pretrained(out).encode(TEXTS)
    np.testing.assert_allclose(served, np.array(expected), atol=1e-5)
    assert np.abs(served - np.array(full)).max() > 1e-3  # not the same as full removal


def test_usif_with_the_prior_uses_the_reference_sentence_length(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c")
    postprocess.apply(ckpt, parse(["--weighting", "usif", "--eval-dir", "/nope"]))
    spec = ckpt.manifest.postprocess
    assert spec.usif_n == postprocess.USIF_PRIOR_N and spec.component_removal is None
    tok = make_tokenizer(False)
    counts = freq.prior_counts(tok, ckpt.manifest.vocab_size, n_words=postprocess.PRIOR_WORDS)
    weights, _ = freq.usif_weights(freq.probabilities(counts), postprocess.USIF_PRIOR_N)
    np.testing.assert_allclose(ckpt.tensors[TOKEN_WEIGHTS].numpy(), weights, rtol=1e-6)
    u = ckpt.tensors[COMPONENTS].double()  # full removal keeps orthonormal rows
    np.testing.assert_allclose((u @ u.T).numpy(), np.eye(len(u)), atol=1e-5)


# --- frequency estimation ------------------------------------------------------------------


def test_corpus_counts_plain_text(corpus_file):
    tok = make_tokenizer(False)
    vocab = tok.get_vocab_size()
    counts, n_docs = freq.corpus_counts(tok, vocab, [corpus_file], progress=False)
    assert n_docs == len(CORPUS)  # the blank line is not a document
    words = " ".join(CORPUS).split()
    for w in ("the", "cat", "a", "dog", "mat"):
        assert counts[tok.token_to_id(w)] == words.count(w)
    assert counts.sum() == len(words)
    assert counts[UNK] == sum(w not in WORDS for w in words)


def test_corpus_counts_include_bos_like_serving(corpus_file):
    tok = make_tokenizer(True)
    counts, _ = freq.corpus_counts(tok, tok.get_vocab_size(), [corpus_file], progress=False)
    assert counts[BOS] == len(CORPUS)
    plain, _ = freq.corpus_counts(
        tok, tok.get_vocab_size(), [corpus_file], add_special_tokens=False, progress=False
    )
    assert plain[BOS] == 0


def test_corpus_counts_jsonl_fields_and_gzip(tmp_path):
    rows = [
        {"_id": "1", "title": "big dog", "text": "the dog ran"},
        {"_id": "2", "text": "the cat sat"},  # no title: text alone
        {"_id": "3", "title": "", "text": ""},  # empty document: skipped
    ]
    data = "\n".join(json.dumps(r) for r in rows) + "\n"
    plain = tmp_path / "docs.jsonl"
    plain.write_text(data)
    packed = tmp_path / "more.jsonl.gz"
    packed.write_bytes(gzip.compress(data.encode()))
    assert list(freq.iter_documents([plain])) == ["big dog the dog ran", "the cat sat"]
    assert list(freq.iter_documents([plain], fields=["text"])) == ["the dog ran", "the cat sat"]
    tok = make_tokenizer(False)
    counts, n_docs = freq.corpus_counts(
        tok, tok.get_vocab_size(), [plain, packed], batch_size=1, progress=False
    )
    assert n_docs == 4
    assert counts[tok.token_to_id("dog")] == 4
    assert counts[tok.token_to_id("the")] == 4
    assert counts[tok.token_to_id("big")] == 2


def test_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the cat"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        list(freq.iter_documents([bad]))
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"body": "the cat"}\n')
    with pytest.raises(ValueError, match=r"missing.jsonl:1: none of the fields"):
        list(freq.iter_documents([missing]))


def test_prior_counts_follow_wordfreq():
    import wordfreq

    tok = make_tokenizer(True)
    counts = freq.prior_counts(tok, tok.get_vocab_size(), n_words=2000)
    freqs = wordfreq.get_frequency_dict("en")
    top = wordfreq.top_n_list("en", 2000)
    assert counts[tok.token_to_id("the")] == pytest.approx(freqs["the"])
    assert counts[tok.token_to_id("cat")] == pytest.approx(freqs["cat"])
    total = sum(freqs[w] for w in top)
    # BOS occurs once per PRIOR_WORDS_PER_TEXT words; each word credits each of its tokens.
    assert counts[BOS] == pytest.approx(total / freq.PRIOR_WORDS_PER_TEXT)
    n_tokens = {w: len(tok.encode(" " + w, add_special_tokens=False).ids) for w in top}
    expected = sum(freqs[w] * n_tokens[w] for w in top) + total / freq.PRIOR_WORDS_PER_TEXT
    assert counts.sum() == pytest.approx(expected)
    assert counts[0] == 0  # <pad> never occurs


def test_sif_weights_formula():
    p = np.array([0.0, 1e-3, 0.05, 0.5])
    np.testing.assert_allclose(freq.sif_weights(p, 1e-3), 1e-3 / (1e-3 + p))
    w = freq.sif_weights(p, 1e-3)
    assert w[0] == 1.0 and w[1] == pytest.approx(0.5)
    assert np.all(np.diff(w) < 0)  # more frequent, less weight
    with pytest.raises(ValueError):
        freq.sif_weights(p, 0.0)
    np.testing.assert_allclose(freq.probabilities(np.array([1.0, 3.0, 0.0])), [0.25, 0.75, 0.0])
    with pytest.raises(ValueError, match="empty"):
        freq.probabilities(np.zeros(3))


def test_tokens_past_the_table_are_not_counted(corpus_file):
    tok = make_tokenizer(False)
    counts, _ = freq.corpus_counts(tok, 10, [corpus_file], progress=False)
    assert counts.shape == (10,)
    assert counts[tok.token_to_id("the")] == " ".join(CORPUS).split().count("the")


# --- arguments and extraction-time quality ---------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--freq", "corpus"], "needs --corpus"),
        (["--remove-components", "-1"], ">= 0"),
        (["--remove-components", str(HIDDEN + 1)], "exceeds the hidden size"),
        (["--sif-a", "0"], "> 0"),
        (["--corpus", "/no/such/file.txt"], "no such file"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, argv, message):
    ckpt = make_checkpoint(tmp_path / "c")
    with pytest.raises(ValueError, match=message):
        postprocess.apply(ckpt, parse(argv))


def test_quality_recorded_when_eval_data_present(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c")
    sts = tmp_path / "eval" / "stsbenchmark"
    sts.mkdir(parents=True)
    lines = [
        f"g\tf\ty\t{i}\t{score}\t{a}\t{b}"
        for i, (score, a, b) in enumerate(
            [
                (5.0, "the cat sat", "the cat sat"),
                (4.0, "the cat sat on the mat", "a cat sat on a mat"),
                (2.0, "the dog ran", "a bird flew"),
                (0.0, "the quick brown dog", "blue sea is very old"),
            ]
        )
    ]
    (sts / "sts-dev.csv").write_text("\n".join(lines) + "\n")
    postprocess.apply(ckpt, parse(["--eval-dir", str(tmp_path / "eval")]))
    score = ckpt.manifest.quality[postprocess.QUALITY_KEY]
    assert -100 <= score <= 100
    empty = make_checkpoint(tmp_path / "d")
    postprocess.apply(empty, parse(["--eval-dir", str(tmp_path / "missing")]))
    assert postprocess.QUALITY_KEY not in empty.manifest.quality
