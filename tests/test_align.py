"""Alignment to a teacher (`python -m extract --teacher`): the solver, the cache, the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from extract import align, teacher
from extract.cli import main
from tests.static_models import save_static_embedding
from tests.test_extract import RAW, one_line_error, run_cli
from tests.tiny_models import WORDS, save_tiny_model
from zeroth.evaluation.corpus import build_corpus
from zeroth.manifest import Manifest
from zeroth.model import StaticEmbedder


def random_problem(seed: int = 0, n: int = 200, v: int = 120, d: int = 8, unused: int = 20):
    """A bag of tokens that never uses the last `unused` tokens, targets, and a prior."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(0.08, size=(n, v)).astype(np.float32)
    counts[:, v - unused :] = 0
    counts[counts.sum(1) == 0, 0] = 1
    bag = sp.csr_matrix(counts / counts.sum(1, keepdims=True))
    targets = rng.standard_normal((n, d)).astype(np.float32)
    x0 = rng.standard_normal((v, d)).astype(np.float32)
    return bag, targets, x0


def residual(bag: sp.csr_matrix, x: np.ndarray, targets: np.ndarray) -> float:
    return float(np.linalg.norm(bag @ x - targets))


def test_fit_reduces_the_residual_and_solves_the_normal_equations():
    # Fewer texts than used tokens: a small lambda can nearly interpolate the targets.
    bag, y, x0 = random_problem(n=60)
    lam = 0.01
    result = align.fit(bag, y, x0, lam, block=3, rtol=1e-8, maxiter=2000, progress=False)
    assert residual(bag, result.table, y) < 0.2 * residual(bag, x0, y)
    # The stationarity condition of the objective, on every column block alike.
    gradient = bag.T @ (bag @ result.table - y) + lam * (result.table - x0)
    assert np.abs(gradient).max() < 1e-4
    assert sum(result.cg_iterations) > 0


def test_large_lambda_returns_the_prior_and_unused_rows_keep_it():
    bag, y, x0 = random_problem(seed=1)
    near = align.fit(bag, y, x0, 1e8, progress=False).table
    np.testing.assert_allclose(near, x0, atol=1e-5)
    loose = align.fit(bag, y, x0, 1e-3, progress=False).table
    unused = np.asarray(bag.getnnz(axis=0)) == 0
    assert unused.sum() == 20
    np.testing.assert_array_equal(loose[unused], x0[unused])
    assert np.abs(loose[~unused] - x0[~unused]).max() > 0.1


def test_dead_teacher_dimensions_stay_zero():
    bag, y, x0 = random_problem(seed=2)
    y[:, 3] = 0.0
    result = align.fit(bag, y, x0, 0.1, progress=False)
    assert result.dead_dims == [3]
    assert not np.abs(result.table[:, 3]).any()
    assert np.isfinite(result.table).all()


def test_prior_is_the_least_squares_map_of_the_table():
    bag, _, _ = random_problem(seed=3, v=60, unused=0)
    rng = np.random.default_rng(3)
    table = rng.standard_normal((60, 10)).astype(np.float32)
    p = rng.standard_normal((10, 4)).astype(np.float32)
    # Targets that a linear map of the pooled table explains exactly: the prior recovers it.
    y = (bag @ table) @ p
    np.testing.assert_allclose(align.prior(bag, table, y), table @ p, atol=1e-3)


def test_bag_of_tokens_rows_are_token_frequencies():
    from tests.static_models import tiny_tokenizer

    tok = tiny_tokenizer()
    bag, n_tokens = align.bag_of_tokens(tok, ["the cat the", "zebra"], 60, progress=False)
    ids = tok.encode("the cat the").ids
    assert n_tokens == len(ids) + len(tok.encode("zebra").ids)
    row = bag[0].toarray()[0]
    np.testing.assert_allclose(row.sum(), 1.0, rtol=1e-6)
    assert row[tok.token_to_id("the")] == pytest.approx(2 / len(ids))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("align")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(2, 12))) for _ in range(300)) + "\n"
    )
    return {
        "llama": save_tiny_model("llama", root / "llama"),
        "teacher": save_static_embedding(root / "teacher", normalize=True),
        "corpus": corpus,
    }


def test_cache_hit_skips_encoding(setup, tmp_path):
    calls: list[int] = []
    model = teacher.load_teacher(setup["teacher"], progress=False)
    encode = model.encode

    def counting(texts):
        calls.append(len(texts))
        return encode(texts)

    model.encode = counting
    texts = setup["corpus"].read_text().splitlines()
    first, hit = teacher.cached_encode(model, texts, tmp_path)
    assert (hit, calls) == (False, [len(texts)])
    again, hit = teacher.cached_encode(model, texts, tmp_path)
    assert (hit, calls) == (True, [len(texts)])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    # Other texts are another key.
    teacher.cached_encode(model, texts[:-1], tmp_path)
    assert calls == [len(texts), len(texts) - 1]


def aligned_args(setup, out: Path, cache: Path, *extra) -> list:
    return [
        setup["llama"],
        "--out",
        out,
        "--teacher",
        setup["teacher"],
        "--corpus",
        setup["corpus"],
        "--cache-dir",
        cache,
        "--eval-dir",
        "/nonexistent",
        *extra,
    ]


def test_cli_writes_an_aligned_checkpoint(setup, tmp_path, capsys):
    out = tmp_path / "aligned"
    rc, err = run_cli(aligned_args(setup, out, tmp_path / "cache", "--align-lambda", "0.3"), capsys)
    assert rc == 0, err
    m = Manifest.read(out)
    a = m.alignment
    assert (m.hidden_size, m.norm, m.postprocess.weighting) == (16, None, "none")
    assert m.extraction["table"].startswith("aligned to a teacher (prior from: layer0")
    assert (a.align_lambda, a.prior, a.dims, a.corpus_texts) == (0.3, "table+tokens", 16, 300)
    assert a.teacher_sha256 == teacher.folder_hash(setup["teacher"])
    assert a.corpus_sha256 == teacher.texts_hash(setup["corpus"].read_text().splitlines())
    assert a.corpus_tokens > a.corpus_texts and a.stsb_dev_by_lambda is None
    # The corpus and the token strings, each cached once.
    assert len(list((tmp_path / "cache" / "teacher").glob("*-corpus-*.npy"))) == 1
    assert len(list((tmp_path / "cache" / "teacher").glob("*-tokens-*.npy"))) == 1
    # Served as stored: the table's mean, L2-normalised, close to the teacher it imitates.
    served = StaticEmbedder.from_pretrained(out)
    texts = ["the cat sat on the mat", "a big red bird flew over the sea"]
    got = served.encode(texts)
    want = teacher.load_teacher(setup["teacher"], progress=False).encode(texts)
    assert (got * want).sum(1).min() > 0.9
    # The unaligned extraction of the same model is far from the teacher's space (other dims).
    raw = tmp_path / "raw"
    assert run_cli([setup["llama"], "--out", raw, *RAW], capsys)[0] == 0
    assert StaticEmbedder.from_pretrained(raw).dim == 64


def test_cli_table_prior_encodes_no_tokens(setup, tmp_path, capsys):
    out = tmp_path / "aligned"
    rc, err = run_cli(
        aligned_args(setup, out, tmp_path / "cache", "--align-prior", "table"), capsys
    )
    assert rc == 0, err
    assert Manifest.read(out).alignment.prior == "table"
    assert not list((tmp_path / "cache" / "teacher").glob("*-tokens-*.npy"))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ["--teacher", "/nonexistent/teacher"],
            "--teacher /nonexistent/teacher: no such directory",
        ),
        (["--corpus"], "--teacher needs --corpus"),
        (["--weighting", "none"], "--weighting: not with --teacher"),
        (["--no-center"], "--no-center: not with --teacher"),
        (["--component-removal", "piecewise"], "--component-removal: not with --teacher"),
        (["--align-lambda", "0"], "--align-lambda must be > 0"),
        (["--align-lambda", "0.1", "1"], "several --align-lambda values need STS-B dev"),
    ],
)
def test_cli_errors_exit_2(setup, tmp_path, capsys, change, message):
    args = aligned_args(setup, tmp_path / "out", tmp_path / "cache")
    if change == ["--corpus"]:
        i = args.index("--corpus")
        del args[i : i + 2]
    elif change[0] == "--teacher":
        args[args.index("--teacher") + 1] = change[1]
    else:
        args += change
    rc, err = run_cli(args, capsys)
    assert rc == 2 and message in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_folder_that_is_no_teacher(setup, tmp_path, capsys):
    args = aligned_args(setup, tmp_path / "out", tmp_path / "cache")
    args[args.index("--teacher") + 1] = setup["llama"]
    rc, err = run_cli(args, capsys)
    assert rc == 2 and "not a sentence-transformers folder" in one_line_error(err)


def test_align_options_need_teacher(setup, tmp_path, capsys):
    rc, err = run_cli(
        [setup["llama"], "--out", tmp_path / "out", "--align-lambda", "0.5", *RAW], capsys
    )
    assert rc == 2 and "--align-lambda needs --teacher" in one_line_error(err)


def test_corpus_builder_drops_scored_texts(tmp_path):
    eval_dir = tmp_path / "eval"
    (eval_dir / "stsbenchmark").mkdir(parents=True)
    (eval_dir / "sick").mkdir()

    def sts(pairs):
        return "".join(f"g\tf\ty\t1\t3.0\t{a}\t{b}\n" for a, b in pairs)

    (eval_dir / "stsbenchmark" / "sts-train.csv").write_text(
        sts([("A cat  sits.", "A dog runs."), ("A dog runs.", "Birds fly.")])
    )
    (eval_dir / "stsbenchmark" / "sts-dev.csv").write_text(sts([("Birds fly.", "Fish swim.")]))
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
    (eval_dir / "sick" / "SICK_train.txt").write_text(
        header + "1\tA man cooks\tA cat sits.\t3.0\tNEUTRAL\n"
    )
    (eval_dir / "sick" / "SICK_trial.txt").write_text(
        header + "2\tA man cooks\tA woman reads\t2.0\tNEUTRAL\n"
    )
    texts, dropped = build_corpus(eval_dir)
    # Whitespace collapsed, first-seen order, duplicates once, scored texts (dev, trial) out.
    assert texts == ["A cat sits.", "A dog runs."]
    assert dropped == 2


def test_main_help_mentions_teacher(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--teacher" in out and "--align-lambda" in out and "--align-prior" in out
