"""Request limits (inputs, tokens, body bytes); every error names its limit and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_app, write_models_list
from test_api_embeddings import assert_error

from zeroth.models_list import (
    DEFAULT_MAX_INPUTS,
    DEFAULT_MAX_TOTAL_TOKENS,
    ConfigError,
    load_models_list,
)


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tiny_ckpt: Path):
    path = write_models_list(
        tmp_path_factory.mktemp("limited") / "models_list.yaml",
        {
            "models": {"tiny": {"path": str(tiny_ckpt), "max_tokens": 6}},
            "default": "tiny",
            "limits": {"max_inputs": 3, "max_total_tokens": 10},
        },
    )
    return make_app(path, max_body_bytes=4096).test_client()


def test_defaults_are_openais(models_list: Path) -> None:
    limits = load_models_list(models_list).limits
    assert (limits.max_inputs, limits.max_total_tokens) == (2048, 300_000)
    assert (DEFAULT_MAX_INPUTS, DEFAULT_MAX_TOTAL_TOKENS) == (2048, 300_000)


def test_default_inputs_limit(client) -> None:
    ok = client.post("/v1/embeddings", json={"input": ["cat"] * 2048})
    assert ok.status_code == 200 and len(ok.get_json()["data"]) == 2048
    resp = client.post("/v1/embeddings", json={"input": ["cat"] * 2049})
    msg = assert_error(resp, 400, "input", None)
    assert "2049" in msg and "2048" in msg
    assert "limits.max_inputs" in msg


@pytest.mark.parametrize("inputs", [["the cat"] * 4, [[2, 3]] * 4])
def test_configured_inputs_limit(limited, inputs) -> None:
    assert limited.post("/v1/embeddings", json={"input": inputs[:3]}).status_code == 200
    msg = assert_error(limited.post("/v1/embeddings", json={"input": inputs}), 400, "input", None)
    assert "at most 3" in msg and "limits.max_inputs" in msg


def test_total_tokens_limit(limited) -> None:
    # "the cat sat" is 4 tokens with the BOS: 2 inputs = 8 tokens pass, 3 = 12 do not.
    ok = limited.post("/v1/embeddings", json={"input": ["the cat sat"] * 2})
    assert ok.status_code == 200 and ok.get_json()["usage"]["total_tokens"] == 8
    resp = limited.post("/v1/embeddings", json={"input": ["the cat sat"] * 3})
    msg = assert_error(resp, 400, "input", "max_tokens_per_request")
    assert "12 tokens" in msg and "maximum of 10" in msg
    assert "limits.max_total_tokens" in msg
    ids = limited.post("/v1/embeddings", json={"input": [[2, 3, 4, 5]] * 3})
    assert_error(ids, 400, "input", "max_tokens_per_request")


def test_per_input_limit_still_applies(limited) -> None:
    resp = limited.post("/v1/embeddings", json={"input": "the cat sat on the mat"})
    msg = assert_error(resp, 400, "input", None)
    assert "maximum of 6 tokens per input" in msg


def test_body_limit_names_its_setting(limited) -> None:
    resp = limited.post("/v1/embeddings", json={"input": "cat " * 2000})
    msg = assert_error(resp, 413, None, "request_too_large")
    assert "4096 bytes" in msg and "ZEROTH_MAX_BODY_BYTES" in msg


@pytest.mark.parametrize(
    "limits, expected",
    [
        ({"max_inputs": 0}, "limits.max_inputs: Input should be greater than or equal to 1"),
        (
            {"max_total_tokens": "many"},
            "limits.max_total_tokens: Input should be a valid integer, unable to parse string "
            "as an integer",
        ),
        ({"max_input": 5}, "limits.max_input: unknown key (allowed: max_inputs, max_total_tokens)"),
    ],
)
def test_bad_limits_fail_in_one_line(tmp_path: Path, tiny_ckpt: Path, limits, expected) -> None:
    path = write_models_list(
        tmp_path / "m.yaml", {"models": {"t": {"path": str(tiny_ckpt)}}, "limits": limits}
    )
    with pytest.raises(ConfigError) as exc:
        load_models_list(path)
    assert str(exc.value) == f"{path}: {expected}"
