"""Every client people point at an OpenAI-compatible server, unmodified, against gunicorn
serving the default model from the README's minimal models list (nothing but `path:`, so
LangChain's token ids are read by `token_ids: auto`), with an API key on. Each test checks the
vectors against the model in this process and the server's own vectors for plain text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from real_server import (
    OPENAI_NAMES,
    OTHER_NAME,
    TEXTS,
    Recorder,
    api_vectors,
    b64_vector,
    curl,
    serving,
)

from zeroth.launch import GunicornServer
from zeroth.tiktoken_ids import decode_to_texts

pytestmark = pytest.mark.slow

KEY = "sk-clients"


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model: Path) -> Iterator[GunicornServer]:
    with serving(tmp_path_factory.mktemp("clients"), env={"ZEROTH_API_KEYS": KEY}) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(default_model: Path):
    """The same model in this process: what the server must answer for plain text."""
    from zeroth.model import StaticEmbedder

    return StaticEmbedder.from_pretrained(default_model)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_openai_sync_base64_float_and_dimensions(server, reference) -> None:
    import openai

    recorder = Recorder()
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, http_client=recorder.client
    )
    expected = reference.encode(TEXTS)
    for model in (*OPENAI_NAMES, OTHER_NAME):
        default = client.embeddings.create(model=model, input=TEXTS)
        # The client asks for base64 unless told otherwise, and decodes it itself.
        assert recorder.bodies[-1]["encoding_format"] == "base64"
        floats = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
        a = np.array([d.embedding for d in default.data], dtype=np.float32)
        b = np.array([d.embedding for d in floats.data], dtype=np.float32)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, expected, atol=1e-6)
        assert default.model == model and [d.index for d in default.data] == list(range(6))
        assert default.usage.prompt_tokens == sum(map(len, reference.tokenize(TEXTS)))
    for fmt in (None, "base64", "float"):
        extra = {"encoding_format": fmt} if fmt else {}
        short = client.embeddings.create(model=OPENAI_NAMES[0], input=TEXTS, dimensions=64, **extra)
        # Asked for base64 explicitly, the client hands the strings over undecoded.
        rows = [b64_vector(d.embedding) if fmt == "base64" else d.embedding for d in short.data]
        got = np.array(rows, dtype=np.float32)
        assert got.shape == (len(TEXTS), 64)
        np.testing.assert_allclose(got, _unit(expected[:, :64]), atol=1e-6)
    one = client.embeddings.create(model=OPENAI_NAMES[0], input=TEXTS[0])
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-6)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    client.close()


def test_async_openai_concurrent_requests(server, reference) -> None:
    import openai

    expected = reference.encode(TEXTS)

    async def run() -> list:
        recorder = Recorder(asynchronous=True)
        client = openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, http_client=recorder.client
        )
        try:
            calls = [client.embeddings.create(model=OPENAI_NAMES[0], input=t) for t in TEXTS]
            calls += [
                client.embeddings.create(
                    model=OPENAI_NAMES[0], input=TEXTS, encoding_format="float"
                ),
                client.embeddings.create(model=OPENAI_NAMES[0], input=TEXTS, dimensions=32),
            ]
            results = await asyncio.gather(*calls)
        finally:
            await client.close()
        assert sum(b["encoding_format"] == "base64" for b in recorder.bodies) == len(TEXTS) + 1
        return results

    results = asyncio.run(run())
    singles = np.array([r.data[0].embedding for r in results[: len(TEXTS)]], dtype=np.float32)
    np.testing.assert_allclose(singles, expected, atol=1e-6)
    batch = np.array([d.embedding for d in results[len(TEXTS)].data], dtype=np.float32)
    np.testing.assert_allclose(batch, expected, atol=1e-6)
    short = np.array([d.embedding for d in results[-1].data], dtype=np.float32)
    np.testing.assert_allclose(short, _unit(expected[:, :32]), atol=1e-6)


def _langchain(server, model: str, recorder: Recorder, **kwargs):
    from langchain_openai import OpenAIEmbeddings

    return OpenAIEmbeddings(
        model=model,
        base_url=f"{server.url}/v1",
        api_key=KEY,
        http_client=recorder.client,
        max_retries=0,
        **kwargs,
    )


@pytest.mark.parametrize("model", OPENAI_NAMES)
def test_langchain_defaults_on_the_minimal_list(server, reference, model: str) -> None:
    """LangChain sends cl100k_base ids for these names; with only `path:` in the list the
    server reads them as such and answers what it answers for the plain text."""
    recorder = Recorder()
    lc = _langchain(server, model, recorder)
    docs = np.array(lc.embed_documents(TEXTS), dtype=np.float32)
    query = np.array(lc.embed_query(TEXTS[2]), dtype=np.float32)
    recorder.client.close()
    sent = recorder.bodies[0]["input"]
    assert all(isinstance(row, list) and all(isinstance(i, int) for i in row) for row in sent)
    # Past our own vocabulary: cl100k ids, which only a tiktoken reading makes sense of.
    assert max(i for row in sent for i in row) >= reference.vocab_size
    plain, _ = api_vectors(server.url, model, TEXTS, KEY)
    np.testing.assert_allclose(docs, plain, atol=1e-6)
    np.testing.assert_allclose(query, plain[2], atol=1e-6)


def test_langchain_documents_longer_than_its_chunks(server, reference) -> None:
    """Longer than LangChain's 8191-token chunks: it splits them, embeds each chunk (our
    tokenizer may need more tokens for the same text, still accepted: limits count the ids as
    sent) and averages by chunk length. More documents than `chunk_size` per request, too."""
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base")
    words = "The quick brown fox jumps over the lazy dog near the bank of the river. "
    long_docs = [
        words * 1500 + "Der schnelle braune Fuchs. " * 100,  # ~ 19k cl100k tokens
        "东京是日本的首都。" * 2000,  # cut mid-character by the chunking
        "short one",
    ]
    recorder = Recorder()
    lc = _langchain(server, OPENAI_NAMES[0], recorder, chunk_size=2)
    got = np.array(lc.embed_documents(long_docs), dtype=np.float32)
    recorder.client.close()
    assert len(recorder.bodies) >= 3  # chunk_size=2: several requests
    assert max(len(row) for body in recorder.bodies for row in body["input"]) == 8191
    for doc, vector in zip(long_docs, got, strict=True):
        ids = enc.encode_ordinary(doc)
        chunks = [ids[i : i + 8191] for i in range(0, len(ids), 8191)]
        texts = decode_to_texts(enc, chunks)
        weights = np.array([len(c) for c in chunks], dtype=np.float64)
        mean = (reference.encode(texts).astype(np.float64) * weights[:, None]).sum(0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert len(enc.encode_ordinary(long_docs[0])) > 2 * 8191


def test_llamaindex_openai_like(server, reference) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    for model in (OPENAI_NAMES[0], OTHER_NAME):
        recorder = Recorder()
        emb = OpenAILikeEmbedding(
            model_name=model,
            api_base=f"{server.url}/v1",
            api_key=KEY,
            embed_batch_size=4,
            max_retries=0,
            http_client=recorder.client,
        )
        batch = np.array(emb.get_text_embedding_batch(TEXTS), dtype=np.float32)
        query = np.array(emb.get_query_embedding(TEXTS[0]), dtype=np.float32)
        single = np.array(asyncio.run(emb.aget_text_embedding(TEXTS[1])), dtype=np.float32)
        recorder.client.close()
        assert len(recorder.bodies) >= 3  # embed_batch_size=4: two batches, then the query
        assert all(isinstance(t, str) for b in recorder.bodies for t in b["input"])
        # LlamaIndex sends newlines as spaces.
        sent = [t.replace("\n", " ") for t in TEXTS]
        assert recorder.bodies[0]["input"] == sent[:4]
        plain, _ = api_vectors(server.url, model, sent, KEY)
        np.testing.assert_allclose(batch, plain, atol=1e-6)
        np.testing.assert_allclose(batch, reference.encode(sent), atol=1e-6)
        np.testing.assert_allclose(query, plain[0], atol=1e-6)
        np.testing.assert_allclose(single, plain[1], atol=1e-6)


def test_curl(server, reference) -> None:
    url = f"{server.url}/v1/embeddings"
    auth = ["-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json"]
    expected = reference.encode(TEXTS[:2])
    body = json.dumps({"model": OPENAI_NAMES[0], "input": TEXTS[:2]})
    status, floats = curl(url, *auth, "-d", body)
    assert status == 200
    got = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    body = json.dumps({"model": OTHER_NAME, "input": TEXTS[:2], "encoding_format": "base64"})
    status, b64 = curl(url, *auth, "-d", body)
    assert status == 200
    np.testing.assert_array_equal(np.stack([b64_vector(d["embedding"]) for d in b64["data"]]), got)
    status, refused = curl(url, "-H", "Content-Type: application/json", "-d", body)
    assert status == 401 and refused["error"]["code"] == "invalid_api_key"
    status, model = curl(*auth[:2], f"{server.url}/v1/models/{OPENAI_NAMES[0]}")
    assert status == 200 and model["token_ids"] == "tiktoken:cl100k_base"
    status, model = curl(*auth[:2], f"{server.url}/v1/models/{OTHER_NAME}")
    assert status == 200 and model["token_ids"] == "native"
    # The start-up log says the same.
    log = server.log_text()
    assert f"model {OPENAI_NAMES[1]} -> " in log
    assert "token ids: tiktoken:cl100k_base (auto)" in log and "token ids: native (auto)" in log
