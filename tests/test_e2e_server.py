"""End to end: the default model (what `make serve` serves) under gunicorn with the checked-in
gunicorn.conf.py and models_list.yaml, driven by the unmodified clients: the openai client,
LangChain's OpenAIEmbeddings and curl. One server per session, shared by every test here but
the SmolLM2 parity test, which serves that extraction from a list of its own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from real_server import (
    OTHER_NAME,
    ROOT,
    SMOLLM2_DIR,
    TEXTS,
    Recorder,
    curl,
    minimal_models_list,
    serving,
)

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory, default_model: Path) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("gunicorn")
    with serving(folder, models_list=ROOT / "models_list.yaml") as server:
        yield server.url


@pytest.fixture(scope="session")
def reference(default_model: Path):
    """The same model in this process: what the server must answer."""
    from zeroth.model import StaticEmbedder

    return StaticEmbedder.from_pretrained(default_model)


@pytest.fixture(scope="session")
def openai_client(server_url: str) -> Iterator:
    import openai

    recorder = Recorder()
    client = openai.OpenAI(
        base_url=f"{server_url}/v1", api_key="unused", max_retries=0, http_client=recorder.client
    )
    client.recorder = recorder
    yield client
    client.close()  # lets gunicorn's keep-alive threads finish at once on shutdown


def test_openai_client_base64_and_float(openai_client, reference) -> None:
    # The client asks for base64 by default and decodes it itself.
    default = openai_client.embeddings.create(model="text-embedding-3-small", input=TEXTS)
    assert openai_client.recorder.bodies[-1]["encoding_format"] == "base64"
    floats = openai_client.embeddings.create(
        model="text-embedding-3-small", input=TEXTS, encoding_format="float"
    )
    a = np.array([d.embedding for d in default.data], dtype=np.float32)
    b = np.array([d.embedding for d in floats.data], dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, reference.encode(TEXTS), atol=1e-6)
    assert [d.index for d in default.data] == list(range(len(TEXTS)))
    assert default.model == "text-embedding-3-small"
    n_tokens = sum(map(len, reference.tokenize(TEXTS)))
    assert default.usage.prompt_tokens == default.usage.total_tokens == n_tokens


def test_openai_client_options_and_errors(openai_client, reference) -> None:
    import openai

    ada = openai_client.embeddings.create(model="text-embedding-ada-002", input=TEXTS[0])
    np.testing.assert_allclose(ada.data[0].embedding, reference.encode(TEXTS[:1])[0], atol=1e-6)
    short = openai_client.embeddings.create(
        model="text-embedding-3-small", input=TEXTS[:2], dimensions=64
    )
    full = reference.encode(TEXTS[:2])[:, :64]
    np.testing.assert_allclose(
        [d.embedding for d in short.data],
        full / np.linalg.norm(full, axis=1, keepdims=True),
        atol=1e-6,
    )
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.embeddings.create(model="no-such-model", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as empty:
        openai_client.embeddings.create(model="text-embedding-3-small", input="")
    assert empty.value.param == "input"
    listed = {m.id for m in openai_client.models.list()}
    assert listed == {"text-embedding-3-small", "text-embedding-ada-002"}
    assert openai_client.models.retrieve("text-embedding-ada-002").id == "text-embedding-ada-002"


def test_langchain_sends_cl100k_ids_and_gets_the_same_vectors(server_url, openai_client) -> None:
    from langchain_openai import OpenAIEmbeddings

    recorder = Recorder()
    lc = OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=f"{server_url}/v1",
        api_key="unused",
        http_client=recorder.client,
    )
    docs = np.array(lc.embed_documents(TEXTS), dtype=np.float32)
    query = np.array(lc.embed_query(TEXTS[2]), dtype=np.float32)
    recorder.client.close()
    # What makes this test worth having: LangChain sends cl100k_base ids, not the texts.
    sent = recorder.bodies[0]["input"]
    assert isinstance(sent, list) and all(isinstance(row, list) for row in sent)
    assert all(isinstance(i, int) for row in sent for i in row)
    as_text = openai_client.embeddings.create(
        model="text-embedding-3-small", input=TEXTS, encoding_format="float"
    )
    expected = np.array([d.embedding for d in as_text.data], dtype=np.float32)
    np.testing.assert_allclose(docs, expected, atol=1e-6)
    np.testing.assert_allclose(query, expected[2], atol=1e-6)


def test_curl(server_url: str, reference) -> None:
    status, body = curl(
        f"{server_url}/v1/embeddings",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"model": "text-embedding-ada-002", "input": "The food was delicious"}',
    )
    assert status == 200
    np.testing.assert_allclose(
        body["data"][0]["embedding"], reference.encode(["The food was delicious"])[0], atol=1e-6
    )
    # curl -d without a Content-Type sends a form: 415 in OpenAI's shape, not HTML.
    status, body = curl(f"{server_url}/v1/embeddings", "-d", '{"input": "x"}')
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    status, body = curl(
        f"{server_url}/v1/embeddings", "-H", "Content-Type: application/json", "-d", "{not json"
    )
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = curl("-X", "GET", f"{server_url}/v1/embeddings")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_oversized_bodies_are_413(server_url: str, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"input": ["word " * 1000] * 3500}))  # 17.5 MB > 16 MiB
    url = f"{server_url}/v1/embeddings"
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):  # declared length, or none
        status, body = curl(
            url, "-H", "Content-Type: application/json", *extra, "--data-binary", f"@{big}"
        )
        assert status == 413 and body["error"]["code"] == "request_too_large"
    status, _ = curl(
        url,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Transfer-Encoding: chunked",
        "-d",
        '{"input": "chunked and small"}',
    )
    assert status == 200


def test_concurrent_requests_are_batch_independent(server_url: str, openai_client) -> None:
    def embed(inputs):
        resp = openai_client.embeddings.create(model="text-embedding-3-small", input=inputs)
        return np.array([d.embedding for d in resp.data], dtype=np.float32)

    batch = embed(TEXTS)
    with ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(embed, [[t] for t in TEXTS] * 4))
    for i, single in enumerate(singles):
        np.testing.assert_array_equal(single[0], batch[i % len(TEXTS)])


def test_metrics_aggregate_across_workers(server_url: str) -> None:
    def count() -> float:
        status, body = _get(f"{server_url}/metrics")
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("zeroth_requests_total{") and 'endpoint="/health"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = count()
    for _ in range(20):  # spread over both workers by the kernel's accept queue
        assert _get(f"{server_url}/health")[0] == 200
    assert count() - before == 20


def test_smollm2_parity_with_the_full_hf_model(tmp_path: Path, smollm2_model: Path, capsys):
    """zeroth.evaluation.parity: the served vectors of the SmolLM2 extraction equal the whole
    source model's hooked computation (an imported table, like the default's, has no source
    model to compare with)."""
    from zeroth.evaluation.parity import main as parity

    models_list = minimal_models_list(tmp_path, SMOLLM2_DIR)
    with serving(tmp_path, models_list=models_list, workers=1) as server:
        rc = parity(
            ["--api_url", f"{server.url}/v1", "--model", OTHER_NAME]
            + ["--checkpoint", str(smollm2_model), "--json", "--min-cosine", "0.99999"]
        )
    result = json.loads(capsys.readouterr().out)
    assert rc == 0, result
    # `make smollm2` builds the default recipe: the layer-0 table, whose reference runs the
    # full model on each token alone.
    assert result["inputs"] >= 8 and result["norm"] == "layer0 table"
    # The LLM recipe folds token weights, centring and components; parity must cover them.
    assert result["postprocess"]["weighting"] != "none" and result["postprocess"]["center"]
    assert result["max_abs_diff"] < 1e-4
