"""`token_ids: auto`: token-id inputs to aliases named like OpenAI's embedding models are read as
cl100k_base ids (what LangChain sends for those names), any other alias's as the model's own."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from conftest import make_app, tiny_encoding, write_models_list
from test_api_embeddings import assert_error, post, tokens, vectors

from zeroth.models_list import ConfigError, ModelEntry, load_models_list, token_ids_for
from zeroth.registry import ModelRegistry
from zeroth.tiktoken_ids import EncodingUnavailable

TEXTS = ["the cat sat on the mat", "a quick brown fox", "cat cat cat cat"]
OPENAI_NAMES = ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]


@pytest.mark.parametrize(
    ("alias", "written", "expected"),
    [
        *[(name, "auto", "tiktoken:cl100k_base") for name in OPENAI_NAMES],
        ("my-model", "auto", "native"),
        # Only the exact names: another model that merely looks alike is not OpenAI's.
        ("text-embedding-3-small-v2", "auto", "native"),
        ("org/text-embedding-3-small", "auto", "native"),
        # An explicit setting wins, both ways.
        ("text-embedding-3-small", "native", "native"),
        ("my-model", "tiktoken:o200k_base", "tiktoken:o200k_base"),
    ],
)
def test_auto_resolves_by_alias(alias: str, written: str, expected: str) -> None:
    entry = ModelEntry(path=Path("x"), token_ids=written)
    assert token_ids_for(alias, entry) == expected


def test_auto_is_the_default(tmp_path: Path) -> None:
    path = write_models_list(tmp_path / "m.yaml", {"models": {"a": {"path": "x"}}})
    assert load_models_list(path).models["a"].token_ids == "auto"


class Loader:
    """Stands in for tiktoken's files: 'cl100k_base' is the tiny test encoding here."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.encoding = tiny_encoding()

    def __call__(self, name: str) -> tiktoken.Encoding:
        self.asked.append(name)
        if name != "cl100k_base":
            raise EncodingUnavailable(f"tiktoken encoding {name!r} is not cached")
        return self.encoding


def _app(path: Path, loader: Loader):
    registry = ModelRegistry.load(load_models_list(path), encoding_loader=loader)
    app = make_app(path, registry=registry)
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture
def minimal(tmp_path: Path, tiny_ckpt: Path) -> Path:
    """The README's minimal list: nothing but `path:` for each name."""
    names = [*OPENAI_NAMES, "tiny"]
    return write_models_list(
        tmp_path / "m.yaml", {"models": {n: {"path": str(tiny_ckpt)} for n in names}}
    )


def test_minimal_list_reads_openai_names_as_cl100k(minimal, tiny_ckpt: Path, caplog) -> None:
    loader = Loader()
    with caplog.at_level(logging.INFO, logger="zeroth.registry"):
        client = _app(minimal, loader)
    # One encoding per OpenAI name, none for the other alias.
    assert loader.asked == ["cl100k_base"] * len(OPENAI_NAMES)
    by_text = vectors(post(client, {"model": "tiny", "input": TEXTS}))
    openai_ids = [loader.encoding.encode_ordinary(t) for t in TEXTS]
    native_ids = tokens(tiny_ckpt, TEXTS)
    assert openai_ids != native_ids
    for name in OPENAI_NAMES:
        got = vectors(post(client, {"model": name, "input": openai_ids}))
        np.testing.assert_array_equal(got, by_text)
        model = client.get(f"/v1/models/{name}").get_json()
        assert model["id"] == name and model["token_ids"] == "tiktoken:cl100k_base"
        assert f"model {name} -> " in caplog.text
    assert "token ids: tiktoken:cl100k_base (auto)" in caplog.text
    # Any other name: the model's own ids.
    np.testing.assert_array_equal(
        vectors(post(client, {"model": "tiny", "input": native_ids})), by_text
    )
    assert client.get("/v1/models/tiny").get_json()["token_ids"] == "native"
    assert "token ids: native (auto)" in caplog.text


def test_explicit_setting_wins(tmp_path: Path, tiny_ckpt: Path) -> None:
    path = write_models_list(
        tmp_path / "m.yaml",
        {
            "models": {
                "text-embedding-3-small": {"path": str(tiny_ckpt), "token_ids": "native"},
                "mine": {"path": str(tiny_ckpt), "token_ids": "tiktoken:cl100k_base"},
            }
        },
    )
    loader = Loader()
    client = _app(path, loader)
    assert loader.asked == ["cl100k_base"]
    native = tokens(tiny_ckpt, TEXTS)
    np.testing.assert_array_equal(
        vectors(post(client, {"model": "text-embedding-3-small", "input": native})),
        vectors(post(client, {"model": "mine", "input": TEXTS})),
    )
    assert client.get("/v1/models/text-embedding-3-small").get_json()["token_ids"] == "native"
    assert client.get("/v1/models/mine").get_json()["token_ids"] == "tiktoken:cl100k_base"


def test_auto_without_the_encoding_stops_the_start_and_says_why(
    tmp_path: Path, tiny_ckpt: Path
) -> None:
    def missing(name: str) -> tiktoken.Encoding:
        raise EncodingUnavailable(f"tiktoken encoding {name!r} is not cached in /nowhere")

    path = write_models_list(
        tmp_path / "m.yaml", {"models": {"text-embedding-3-large": {"path": str(tiny_ckpt)}}}
    )
    with pytest.raises(ConfigError) as info:
        ModelRegistry.load(load_models_list(path), encoding_loader=missing)
    message = str(info.value)
    assert "models.text-embedding-3-large.token_ids" in message
    assert "token_ids: auto" in message and "token_ids: native" in message
    # Other names never need the file.
    other = write_models_list(tmp_path / "o.yaml", {"models": {"mine": {"path": str(tiny_ckpt)}}})
    assert len(ModelRegistry.load(load_models_list(other), encoding_loader=missing)) == 1


def test_limits_count_the_ids_as_sent(tmp_path: Path, tiny_ckpt: Path) -> None:
    """OpenAI counts (and clients size chunks by) the encoding's ids, not our re-tokenised ones:
    'cat cat cat cat' is 4 ids of the encoding but 5 tokens of the model (BOS)."""
    path = write_models_list(
        tmp_path / "m.yaml",
        {
            "models": {
                "text-embedding-3-small": {"path": str(tiny_ckpt), "max_tokens": 4},
                "cut": {
                    "path": str(tiny_ckpt),
                    "max_tokens": 4,
                    "on_overflow": "truncate",
                    "token_ids": "tiktoken:cl100k_base",
                },
                "tiny": {"path": str(tiny_ckpt)},
            },
            "limits": {"max_total_tokens": 8},
        },
    )
    loader = Loader()
    client = _app(path, loader)
    enc = loader.encoding
    four = enc.encode_ordinary("cat cat cat cat")
    assert len(four) == 4 and len(tokens(tiny_ckpt, ["cat cat cat cat"])[0]) == 5
    resp = post(client, {"model": "text-embedding-3-small", "input": [four, four]})
    # (the strings, one per request: 10 of the model's tokens would be over the limit)
    single = vectors(post(client, {"model": "tiny", "input": "cat cat cat cat"}))
    np.testing.assert_array_equal(vectors(resp), np.concatenate([single, single]))
    # Usage still counts the model's own tokens.
    assert resp.get_json()["usage"]["prompt_tokens"] == 10
    # Past the limits, counted in sent ids: per input, then per request.
    five = enc.encode_ordinary("cat cat cat cat cat")
    msg = assert_error(
        post(client, {"model": "text-embedding-3-small", "input": five}), 400, "input"
    )
    assert "has 5 tokens" in msg
    assert_error(
        post(client, {"model": "text-embedding-3-small", "input": [four, four, four]}),
        400,
        "input",
        "max_tokens_per_request",
    )
    # Strings are counted in the model's tokens, as before.
    assert_error(
        post(client, {"model": "text-embedding-3-small", "input": "cat cat cat cat"}), 400, "input"
    )
    # Truncation cuts the sent ids, before they are decoded.
    np.testing.assert_array_equal(
        vectors(post(client, {"model": "cut", "input": five})),
        vectors(post(client, {"model": "tiny", "input": "cat cat cat cat"})),
    )
