"""Imported real models served by Zeroth against their libraries: WordLlama from its wheel, a
model2vec model distilled offline from all-MiniLM-L6-v2 (about a minute here) and the same model
as a sentence-transformers StaticEmbedding folder. Vectors on every STS-B dev sentence, through
the Flask app, to cosine >= 0.9999, and the evaluation harness's row equal to the library's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_app

from extract.cli import main
from extract.fetch import fetch_minilm, fetch_wordllama
from extract.source import sha256_file
from tests.harness import eval_dir, harness_row, served_encoder, stsb_dev_sentences
from tests.test_import_static import cosines
from zeroth.manifest import Manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
MIN_COSINE = 0.9999
# About 2,400 Llama tokens, 2,000 WordPiece ones: past model2vec's 512-token limit.
LONG = "The quick brown fox jumps over the lazy dog near the riverbank. " * 170


@pytest.fixture(scope="session")
def wordllama_folder() -> Path:
    return fetch_wordllama(CACHE)


@pytest.fixture(scope="session")
def model2vec_folder(tmp_path_factory) -> Path:
    from model2vec.distill import distill

    out = tmp_path_factory.mktemp("m2v") / "m2v-minilm"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # a local folder: nothing to look up
        distill(str(fetch_minilm(CACHE)), device="cpu").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def static_embedding_folder(model2vec_folder, tmp_path_factory) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    out = tmp_path_factory.mktemp("st") / "st-minilm"
    modules = [StaticEmbedding.from_model2vec(str(model2vec_folder)), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="session")
def served(tmp_path_factory, wordllama_folder, model2vec_folder, static_embedding_folder):
    """The three imported with --alias (as a user would), plus unnormalised aliases."""
    root = tmp_path_factory.mktemp("imported")
    models_list = root / "models_list.yaml"
    for alias, folder in (
        ("wordllama", wordllama_folder),
        ("m2v", model2vec_folder),
        ("st", static_embedding_folder),
    ):
        args = [folder, "--out", root / alias, "--alias", alias, "--models-list", models_list]
        assert main([str(a) for a in args] + ["-q", "--eval-dir", str(eval_dir())]) == 0
    data = yaml.safe_load(models_list.read_text())
    data["models"]["wordllama-raw"] = {"path": "wordllama", "normalize": False}
    data["models"]["m2v-raw"] = {**data["models"]["m2v"], "normalize": False}
    models_list.write_text(yaml.safe_dump(data))
    app = make_app(models_list)
    app.config["TESTING"] = True
    return root, app.test_client()


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return stsb_dev_sentences()


@pytest.fixture(scope="session")
def wordllama():
    from wordllama import WordLlama

    return WordLlama.load(cache_dir=CACHE / "weights" / "wordllama", disable_download=True)


def report(name: str, cos: np.ndarray) -> None:
    print(f"{name}: {len(cos)} texts, min cosine {cos.min():.7f}")
    assert cos.min() >= MIN_COSINE, name


def test_wordllama(served, sentences, wordllama, wordllama_folder):
    import wordllama as wordllama_package

    root, client = served
    m = Manifest.read(root / "wordllama")
    # The fetched folder is the wheel's: the library loads these same weights.
    shipped = Path(wordllama_package.__file__).parent / "weights" / "l2_supercat_256.safetensors"
    assert m.source.sha256 == sha256_file(shipped) == sha256_file(wordllama_folder / m.source.file)
    assert (m.imported.version, m.imported.matryoshka_dims) == ("0.4.0.post1", [64, 128, 256])
    assert (m.vocab_size, m.hidden_size, m.norm) == (32000, 256, None)

    got = served_encoder(client, "wordllama")(sentences)
    report("wordllama", cosines(got, wordllama.embed(sentences)))
    raw = served_encoder(client, "wordllama-raw")(sentences)
    np.testing.assert_allclose(raw, wordllama.embed(sentences), rtol=0, atol=1e-6)
    # No truncation in the library: the whole text counts, and the server takes it whole.
    np.testing.assert_allclose(
        served_encoder(client, "wordllama-raw")([LONG]), wordllama.embed([LONG]), atol=1e-6
    )


@pytest.mark.parametrize("dims", [64, 128])
def test_wordllama_dimensions_are_its_matryoshka_truncation(served, sentences, dims):
    from wordllama import WordLlama

    _, client = served
    small = WordLlama.load(
        cache_dir=CACHE / "weights" / "wordllama", disable_download=True, trunc_dim=dims
    )
    got = served_encoder(client, "wordllama", dimensions=dims)(sentences)
    assert got.shape == (len(sentences), dims)
    report(f"wordllama dimensions={dims}", cosines(got, small.embed(sentences)))


def test_model2vec(served, sentences, model2vec_folder):
    from model2vec import StaticModel

    root, client = served
    library = StaticModel.from_pretrained(model2vec_folder)
    m = Manifest.read(root / "m2v")
    assert (m.imported.max_tokens, m.imported.pca_dims, m.imported.normalize) == (512, 256, True)
    assert m.imported.drop_token_id == library.unk_token_id
    assert m.source.sha256 == sha256_file(model2vec_folder / "model.safetensors")

    report(
        "model2vec", cosines(served_encoder(client, "m2v")(sentences), library.encode(sentences))
    )
    raw = served_encoder(client, "m2v-raw")(sentences)
    report("model2vec unnormalised", cosines(raw, library.encode(sentences, normalize=False)))
    want = library.encode(sentences, normalize=False).astype(np.float32)
    np.testing.assert_allclose(raw, want, atol=2e-3)  # float16 output in the library
    # Past 512 tokens the alias truncates as the library does.
    report(
        "model2vec long text",
        cosines(served_encoder(client, "m2v")([LONG]), library.encode([LONG])),
    )
    # The columns are PCA components: model2vec's dimensionality= is our dimensions.
    reduced = StaticModel.from_pretrained(model2vec_folder, dimensionality=128)
    got = served_encoder(client, "m2v", dimensions=128)(sentences)
    report("model2vec dimensions=128", cosines(got, reduced.encode(sentences)))


def test_static_embedding(served, sentences, static_embedding_folder):
    from sentence_transformers import SentenceTransformer

    root, client = served
    library = SentenceTransformer(str(static_embedding_folder), device="cpu")
    m = Manifest.read(root / "st")
    assert (m.imported.library, m.imported.normalize, m.imported.max_tokens) == (
        "sentence-transformers",
        True,
        512,
    )
    got = served_encoder(client, "st")(sentences + [LONG])
    report("sentence-transformers", cosines(got, library.encode(sentences + [LONG])))


@pytest.mark.parametrize("library", ["wordllama", "m2v"])
def test_harness_row_equals_the_librarys(served, library, wordllama, model2vec_folder):
    _, client = served
    if library == "wordllama":
        own = lambda texts: wordllama.embed(list(texts), norm=True)  # noqa: E731
    else:
        from model2vec import StaticModel

        m2v = StaticModel.from_pretrained(model2vec_folder)

        def own(texts):
            # model2vec returns float16 for a float16 table; in float16 the harness's SciFact
            # dot products round (40.9 instead of 40.8): score its vectors in float32.
            return m2v.encode(list(texts)).astype(np.float32)

    want, want_all = harness_row(own)
    got, got_all = harness_row(served_encoder(client, library))
    print(f"{library} library: | {' | '.join(want)} |")
    print(f"{library} Zeroth:  | {' | '.join(got)} |")
    assert got == want
    for task, scores in want_all.items():
        for metric, value in scores.items():
            if metric != "seconds":
                assert got_all[task][metric] == pytest.approx(value, abs=0.05), (task, metric)
