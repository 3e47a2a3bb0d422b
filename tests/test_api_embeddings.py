"""POST /v1/embeddings through Flask's test client: every rule of the OpenAI contract."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DIM, TINY_VOCAB, make_app, write_models_list

from zeroth.checkpoint import Checkpoint
from zeroth.model import folded_table, reference_embed
from zeroth.tokenizer import load_tokenizer


def post(client, body: object):
    return client.post("/v1/embeddings", json=body)


def vectors(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.get_json()
    rows = []
    for item in resp.get_json()["data"]:
        emb = item["embedding"]
        if isinstance(emb, str):
            rows.append(np.frombuffer(base64.b64decode(emb), dtype="<f4"))
        else:
            rows.append(np.asarray(emb, dtype=np.float32))
    return np.stack(rows)


def tokens(ckpt: Path, texts: list[str], add_special: bool = True) -> list[list[int]]:
    tok = load_tokenizer(ckpt / "tokenizer.json")
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=add_special)]


def assert_error(resp, status: int, param: str | None = None, code: str | None = None) -> str:
    assert resp.status_code == status
    assert resp.mimetype == "application/json"
    err = resp.get_json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    assert err["code"] == code
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert err["message"]
    return err["message"]


TEXTS = ["the cat sat on the mat", "hello world", "a quick brown dog ran over the log", "sea"]


def test_response_shape_and_usage(client, tiny_ckpt: Path) -> None:
    resp = post(client, {"model": "tiny-alias", "input": TEXTS})
    body = resp.get_json()
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list"
    assert body["model"] == "tiny-alias"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" and len(d["embedding"]) == TINY_DIM for d in body["data"])
    expected = sum(map(len, tokens(tiny_ckpt, TEXTS)))  # BOS included: the model's tokenizer
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_vectors_match_the_unfolded_reference(client, tiny_ckpt: Path) -> None:
    got = vectors(post(client, {"model": "tiny", "input": TEXTS}))
    ref = reference_embed(Checkpoint.from_pretrained(tiny_ckpt), tokens(tiny_ckpt, TEXTS))
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_weighted_model_matches_reference(client, tiny_ckpt_weighted: Path) -> None:
    got = vectors(post(client, {"model": "tiny8", "input": TEXTS}))
    ids = tokens(tiny_ckpt_weighted, TEXTS, add_special=False)
    ref = reference_embed(Checkpoint.from_pretrained(tiny_ckpt_weighted), ids)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got.shape == (len(TEXTS), 8)
    usage = post(client, {"model": "tiny8", "input": TEXTS}).get_json()["usage"]
    assert usage["prompt_tokens"] == sum(map(len, ids))


def test_single_string_equals_list_entry(client) -> None:
    alone = vectors(post(client, {"model": "tiny", "input": TEXTS[1]}))
    assert alone.shape == (1, TINY_DIM)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_batch_independence(client, encoding_format: str) -> None:
    batch = vectors(post(client, {"input": TEXTS, "encoding_format": encoding_format}))
    long = " ".join(TEXTS * 20)
    for i, text in enumerate(TEXTS):
        alone = vectors(post(client, {"input": text, "encoding_format": encoding_format}))
        np.testing.assert_array_equal(alone[0], batch[i])
        mixed = vectors(post(client, {"input": [long, text, "a", long]}))
        np.testing.assert_array_equal(mixed[1], batch[i])


def test_base64_is_little_endian_float32_of_the_float_vectors(client) -> None:
    floats = post(client, {"input": TEXTS, "encoding_format": "float"}).get_json()
    b64 = post(client, {"input": TEXTS, "encoding_format": "base64"}).get_json()
    for f, b in zip(floats["data"], b64["data"], strict=True):
        raw = base64.b64decode(b["embedding"])
        assert len(raw) == 4 * TINY_DIM
        np.testing.assert_array_equal(
            np.frombuffer(raw, dtype="<f4"), np.asarray(f["embedding"], dtype=np.float32)
        )
    assert floats["usage"] == b64["usage"]


def test_string_equals_its_own_native_ids(client, tiny_ckpt: Path) -> None:
    by_text = vectors(post(client, {"model": "tiny", "input": TEXTS}))
    ids = tokens(tiny_ckpt, TEXTS)
    resp = post(client, {"model": "tiny", "input": ids})
    np.testing.assert_array_equal(vectors(resp), by_text)
    assert resp.get_json()["usage"]["prompt_tokens"] == sum(map(len, ids))
    single = vectors(post(client, {"model": "tiny", "input": ids[0]}))
    np.testing.assert_array_equal(single[0], by_text[0])


def test_tiktoken_ids_are_retokenised(client, registered_tiny_encoding, tiny_ckpt: Path) -> None:
    enc = registered_tiny_encoding
    ids = [enc.encode_ordinary(t) for t in TEXTS]
    assert ids != tokens(tiny_ckpt, TEXTS)
    resp = post(client, {"model": "tiny-tiktoken", "input": ids, "encoding_format": "base64"})
    by_text = vectors(post(client, {"model": "tiny", "input": TEXTS}))
    np.testing.assert_array_equal(vectors(resp), by_text)
    # Usage counts the model's own tokens, not the tiktoken ids that came in.
    assert resp.get_json()["usage"]["prompt_tokens"] == sum(map(len, tokens(tiny_ckpt, TEXTS)))
    single = vectors(post(client, {"model": "tiny-tiktoken", "input": ids[0]}))
    np.testing.assert_array_equal(single[0], by_text[0])
    # Strings to a tiktoken alias are plain strings.
    np.testing.assert_array_equal(
        vectors(post(client, {"model": "tiny-tiktoken", "input": TEXTS})), by_text
    )


def test_tiktoken_ids_outside_the_encoding(client, registered_tiny_encoding) -> None:
    n = registered_tiny_encoding.n_vocab
    for bad in ([n], [-1], [[1, 2], [n + 5]]):
        msg = assert_error(post(client, {"model": "tiny-tiktoken", "input": bad}), 400, "input")
        assert "outside" in msg
    # A chunk cut inside a UTF-8 character still embeds (LangChain splits by token count).
    cut = registered_tiny_encoding.encode("the é")[:-1]
    assert post(client, {"model": "tiny-tiktoken", "input": cut}).status_code == 200


def test_default_model_and_missing_model(client, tmp_path: Path, tiny_ckpt: Path) -> None:
    resp = post(client, {"input": "cat"})
    assert resp.get_json()["model"] == "tiny"
    np.testing.assert_array_equal(
        vectors(resp), vectors(post(client, {"model": "tiny", "input": "cat"}))
    )
    assert post(client, {"input": "cat", "model": None}).get_json()["model"] == "tiny"
    path = write_models_list(tmp_path / "m.yaml", {"models": {"only": {"path": str(tiny_ckpt)}}})
    no_default = make_app(path).test_client()
    assert_error(post(no_default, {"input": "cat"}), 400, "model")
    assert post(no_default, {"input": "cat", "model": "only"}).status_code == 200


def test_unknown_model_is_404(client) -> None:
    msg = assert_error(post(client, {"model": "gpt-4", "input": "x"}), 404, None, "model_not_found")
    assert "gpt-4" in msg


def test_aliases_with_slashes(client) -> None:
    resp = post(client, {"model": "org/tiny-slash", "input": "cat"})
    assert resp.get_json()["model"] == "org/tiny-slash"


BAD_INPUTS = [
    "",
    [],
    [""],
    ["cat", ""],
    [[]],
    [[1], []],
    [1, "cat"],
    ["cat", 1],
    ["cat", ["dog"]],
    [[1], "cat"],
    [1, 2.5],
    [1.0],
    [True],
    [1, True],
    [[1, True]],
    [[1, 2], [3, [4]]],
    [["cat"]],
    [None],
    ["cat", None],
    {"text": "cat"},
    5,
    3.5,
    True,
    [TINY_VOCAB],
    [-1],
    [[0, 1], [2, TINY_VOCAB + 100]],
    [[0, 2**63]],
    [2**64 - 1],
    ["cat"] * 2049,
    [[1]] * 2049,
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[repr(b)[:30] for b in BAD_INPUTS])
def test_invalid_inputs_are_400(client, bad: object) -> None:
    assert_error(post(client, {"model": "tiny", "input": bad}), 400, "input")


def test_missing_input_is_400(client) -> None:
    assert_error(post(client, {"model": "tiny"}), 400, "input")
    assert_error(post(client, {"model": "tiny", "input": None}), 400, "input")


def test_limits_on_items(client) -> None:
    ok = post(client, {"model": "tiny", "input": ["cat"] * 2048})
    assert len(ok.get_json()["data"]) == 2048
    # One input given as ids is bounded by max_tokens, not by the 2048-item limit.
    ids = post(client, {"model": "tiny", "input": [3] * 3000})
    assert ids.get_json()["usage"]["prompt_tokens"] == 3000


@pytest.mark.parametrize("field", ["model", "user"])
@pytest.mark.parametrize("value", [5, ["tiny"], {"a": 1}, True])
def test_non_string_fields(client, field: str, value: object) -> None:
    assert_error(post(client, {"model": "tiny", "input": "cat", field: value}), 400, field)


def test_user_is_accepted(client) -> None:
    with_user = post(client, {"input": "cat", "user": "user-123"})
    np.testing.assert_array_equal(vectors(with_user), vectors(post(client, {"input": "cat"})))


def test_unknown_parameters_are_rejected(client) -> None:
    msg = assert_error(post(client, {"input": "cat", "temperature": 0}), 400, "temperature")
    assert "temperature" in msg


@pytest.mark.parametrize("fmt", ["FLOAT", "binary", "", 1, None])
def test_encoding_format(client, fmt: object) -> None:
    resp = post(client, {"input": "cat", "encoding_format": fmt})
    if fmt is None:  # null means the default, float
        assert isinstance(resp.get_json()["data"][0]["embedding"], list)
    else:
        assert_error(resp, 400, "encoding_format")


@pytest.mark.parametrize("dims", [0, -1, TINY_DIM + 1, 1.5, "4", True, [4]])
def test_invalid_dimensions(client, dims: object) -> None:
    assert_error(post(client, {"input": "cat", "dimensions": dims}), 400, "dimensions")


def test_dimensions_keep_the_first_components_renormalised(client) -> None:
    full = vectors(post(client, {"input": TEXTS}))
    for n, fmt in ((1, "float"), (5, "base64"), (TINY_DIM, "float")):
        short = vectors(post(client, {"input": TEXTS, "dimensions": n, "encoding_format": fmt}))
        expected = full[:, :n] / np.linalg.norm(full[:, :n], axis=1, keepdims=True)
        assert short.shape == (len(TEXTS), n)
        np.testing.assert_allclose(short, expected, atol=1e-6)
    # Per-model default size; a request may still ask for another one up to the native size.
    default5 = vectors(post(client, {"model": "tiny-dims", "input": TEXTS}))
    np.testing.assert_allclose(default5, vectors(post(client, {"input": TEXTS, "dimensions": 5})))
    assert (
        vectors(post(client, {"model": "tiny-dims", "input": "cat", "dimensions": 9})).shape[1] == 9
    )
    # The bound is the model's own size.
    assert_error(
        post(client, {"model": "tiny8", "input": "cat", "dimensions": 9}), 400, "dimensions"
    )


def test_normalize_false(client, tiny_ckpt: Path) -> None:
    raw = vectors(post(client, {"model": "tiny-raw", "input": TEXTS}))
    unit = vectors(post(client, {"model": "tiny", "input": TEXTS}))
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0)
    np.testing.assert_allclose(raw / norms[:, None], unit, atol=1e-6)
    # Un-normalised means the plain mean of the folded rows.
    table = folded_table(Checkpoint.from_pretrained(tiny_ckpt)).table
    ids = tokens(tiny_ckpt, TEXTS[:1])[0]
    np.testing.assert_allclose(raw[0], table[ids].mean(0).numpy(), atol=1e-6)


def test_max_pooling(client, tiny_ckpt: Path) -> None:
    got = vectors(post(client, {"model": "tiny-max", "input": TEXTS}))
    table = folded_table(Checkpoint.from_pretrained(tiny_ckpt), "max").table
    ref = torch.stack([table[ids].max(0).values for ids in tokens(tiny_ckpt, TEXTS)]).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_max_tokens_error_and_truncate(client, tiny_ckpt: Path) -> None:
    text = "the cat sat on the mat"  # <s> + 6 words = 7 tokens; the limit is 4
    msg = assert_error(post(client, {"model": "tiny-short", "input": ["cat", text]}), 400, "input")
    assert "input[1]" in msg and "4" in msg and "7" in msg
    resp = post(client, {"model": "tiny-truncate", "input": [text, "cat"]})
    got = vectors(resp)
    first4 = tokens(tiny_ckpt, [text])[0][:4]
    np.testing.assert_array_equal(
        got[0], vectors(post(client, {"model": "tiny", "input": first4}))[0]
    )
    assert resp.get_json()["usage"]["prompt_tokens"] == 4 + 2
    # Token-id inputs obey the same limit.
    assert_error(post(client, {"model": "tiny-short", "input": [3] * 5}), 400, "input")
    assert post(client, {"model": "tiny-short", "input": [3] * 4}).status_code == 200


def test_inputs_without_tokens_are_400(client) -> None:
    # tiny8 adds no BOS, so whitespace alone tokenises to nothing.
    msg = assert_error(post(client, {"model": "tiny8", "input": ["cat", "   "]}), 400, "input")
    assert "input[1]" in msg


def test_unicode_and_control_characters(client) -> None:
    odd = ["caf\u00e9 \u6771\u4eac \U0001f600", "\x00\x01\t\n", "\u200b", "a" * 10000]
    got = vectors(post(client, {"input": odd}))
    assert got.shape == (len(odd), TINY_DIM)
    assert np.isfinite(got).all()
