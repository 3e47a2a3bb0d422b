"""The fast path equals a straightforward implementation, to 1e-6.

Fast: StaticEmbedder.embed_ids (folded table, flat ids + offsets, one embedding_bag), the
server's response encoding (orjson on numpy rows, base64 of the float32 bytes, cut from one
encoding of the matrix), the fast tokenizer route (zeroth/fast_bpe.py) and the lean WSGI path
for POST /v1/embeddings (zeroth/api/fast.py). Reference: the unfolded per-input loop
`reference_embed`, plain `json` of Python float lists, the tokenizer's own pipeline and the
Flask app, answer for answer (status, headers, body, log line, metrics).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from werkzeug.test import EnvironBuilder

from zeroth.api.encode import base64_rows, embeddings_body
from zeroth.checkpoint import CENTER, COMPONENTS, Checkpoint
from zeroth.fast_bpe import FastByteLevelBPE
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


# --- The fast tokenizer route (zeroth/fast_bpe.py) equals the tokenizer's own pipeline. -------

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024; we'll see what they've done.",
    "def tokenize(self, texts):\n    return [t.lower() for t in texts]  # 42 == 6 * 7\n",
    "A man is playing a guitar.   A woman is slicing an onion!  Numbers: 3.14159, 1,000,000",
    "<html><body>Hello &amp; goodbye</body></html>\t\ttabs\r\nand CRLF line ends",
]


def byte_level_tokenizer(post_bos: bool = False) -> Tokenizer:
    """A GPT-2 style byte-level BPE, trained here in milliseconds, with special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<s>", "<|im_start|>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    if post_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return tok


@pytest.fixture(scope="module")
def byte_level() -> FastByteLevelBPE:
    fast = FastByteLevelBPE.build(byte_level_tokenizer(), add_special_tokens=True)
    assert fast is not None
    return fast


def plain_ids(fast: FastByteLevelBPE, texts: list[str]) -> list[list[int]]:
    encodings = fast.tokenizer.encode_batch_fast(texts, add_special_tokens=fast.add_special_tokens)
    return [e.ids for e in encodings]


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
    *CORPUS,
]


def test_fast_tokenizer_equals_tokenizer_on_tricky_texts(byte_level) -> None:
    assert byte_level.encode(TRICKY) == plain_ids(byte_level, TRICKY)
    for text in TRICKY:  # alone, and in the all-ASCII shortcut's batch shape
        assert byte_level.encode([text]) == plain_ids(byte_level, [text])


ascii_text = st.text(st.characters(max_codepoint=127), max_size=60)
any_text = st.text(max_size=40)
wordy_text = st.lists(
    st.sampled_from(["the", " ", "  ", "\n", "'s", "'ll", "don't", "12", "<|", "|>", "<s>", "é"])
    | st.sampled_from(["<|endoftext|>", "\t", "\x0b", "\x1c", "\u00a0", "\u2028", "...", "Z"]),
    max_size=12,
).map("".join)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(ascii_text | any_text | wordy_text, min_size=1, max_size=8))
def test_fast_tokenizer_equals_tokenizer_on_random_texts(byte_level, texts) -> None:
    assert byte_level.encode(texts) == plain_ids(byte_level, texts)


def test_fast_tokenizer_cache_stays_bounded(monkeypatch) -> None:
    monkeypatch.setattr("zeroth.fast_bpe.CACHE_SIZE", 8)
    fast = FastByteLevelBPE.build(byte_level_tokenizer(), add_special_tokens=True)
    texts = CORPUS * 3
    assert fast.encode(texts) == plain_ids(fast, texts)
    assert len(fast._cache) <= 8
    long = ["x" * 5000, "a " + "7" * 300 + " b", "word" * 100]  # pieces too long to cache
    assert fast.encode(long) == plain_ids(fast, long)
    assert all(len(piece) <= 48 for piece in fast._cache)


def test_fast_tokenizer_only_where_it_is_exact(monkeypatch, tiny_ckpt: Path) -> None:
    # A BOS added by the post-processor: the self-test sees it and the plain path stays.
    assert FastByteLevelBPE.build(byte_level_tokenizer(post_bos=True), True) is None
    assert FastByteLevelBPE.build(byte_level_tokenizer(post_bos=True), False) is not None
    # Not byte-level BPE at all (the tests' WordLevel models).
    assert StaticEmbedder.from_pretrained(tiny_ckpt).text.fast_bpe is None
    tok = byte_level_tokenizer()
    tok.normalizer = normalizers.Lowercase()
    assert FastByteLevelBPE.build(tok, True) is None
    # A pre-tokenizer regex that would split differently fails the self-test.
    monkeypatch.setattr("zeroth.fast_bpe._PIECES", re.compile(r"\S+|\s+"))
    assert FastByteLevelBPE.build(byte_level_tokenizer(), True) is None
    monkeypatch.undo()
    monkeypatch.setenv("ZEROTH_FAST_TOKENIZER", "0")
    assert FastByteLevelBPE.build(byte_level_tokenizer(), True) is None


SMOLLM2 = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m"


@pytest.mark.skipif(not (SMOLLM2 / "manifest.json").is_file(), reason="no local smollm2-135m")
def test_fast_tokenizers_on_the_served_model() -> None:
    """Its tiktoken twin (what it uses) and the ASCII route (what it would use without one)."""
    emb = StaticEmbedder.from_pretrained(SMOLLM2)
    assert emb.text.twin is not None and emb.text.fast_bpe is None
    ascii_route = FastByteLevelBPE.build(emb.tokenizer, emb.text.add_special_tokens)
    assert ascii_route is not None
    texts = TRICKY + [" ".join(WORDS) * 3, "A man is playing a flute.", "Obama's visit, 2012."]
    eval_file = Path(__file__).resolve().parents[2] / "shared/eval/stsbenchmark/sts-dev.csv"
    if eval_file.is_file():
        from bench.common import sts_sentences

        texts += sts_sentences(eval_file.parents[1])
    want = emb.text.tokenize_plain(texts)
    assert emb.tokenize(texts) == want
    assert ascii_route.encode(texts) == want


# --- The lean WSGI path (zeroth/api/fast.py) answers exactly as the Flask app does. ------------

KEY = "sk-parity"


def _wsgi(app, environ: dict) -> tuple[str, list[tuple[str, str]], bytes]:
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"], out["headers"] = status, headers

    body = b"".join(app(environ, start_response))
    return out["status"], out["headers"], body


def _environ(body: bytes, headers: dict[str, str], **extra) -> dict:
    environ = EnvironBuilder(
        path="/v1/embeddings", method="POST", data=body, headers=headers
    ).get_environ()
    environ.update(extra)
    return environ


def _requests(chunked_body: bytes) -> list[tuple[str, bytes, dict, dict]]:
    """(name, body, headers, environ overrides): a success of each kind and every error."""
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    rid = {"X-Request-ID": "req-parity-1"}
    ok = orjson.dumps({"model": "tiny", "input": ["the cat sat", "hello world"]})
    cases = [
        ("float", ok, auth | rid, {}),
        ("base64", orjson.dumps({"input": "the cat", "encoding_format": "base64"}), auth, {}),
        ("ids", orjson.dumps({"model": "tiny8", "input": [[2, 3, 4], [5]]}), auth | rid, {}),
        ("dims", orjson.dumps({"model": "tiny", "input": "cat", "dimensions": 3}), auth, {}),
        ("truncate", orjson.dumps({"model": "tiny-truncate", "input": "a b c d e f"}), auth, {}),
        ("no key", ok, {"Content-Type": "application/json"}, {}),
        ("wrong key", ok, {"Authorization": "Bearer nope"} | rid, {}),
        ("bad request id", ok, auth | {"X-Request-ID": "has space"}, {}),
        ("empty", b"", auth, {}),
        ("not json", b"{", auth, {}),
        ("not an object", b"[1]", auth, {}),
        ("unknown field", orjson.dumps({"input": "x", "foo": 1}), auth | rid, {}),
        ("empty input", orjson.dumps({"input": ""}), auth, {}),
        ("bad format", orjson.dumps({"input": "x", "encoding_format": "hex"}), auth, {}),
        ("bad dims", orjson.dumps({"input": "x", "dimensions": 999}), auth, {}),
        ("unknown model", orjson.dumps({"input": "x", "model": "gpt-4"}), auth | rid, {}),
        ("too long", orjson.dumps({"model": "tiny-short", "input": "a b c d e f"}), auth, {}),
        ("no tokens", orjson.dumps({"model": "tiny", "input": [[]]}), auth, {}),
        ("id past vocab", orjson.dumps({"input": [[99999]]}), auth, {}),
        ("415", ok, auth | {"Content-Type": "text/plain"}, {}),
        ("413", orjson.dumps({"input": ["cat"] * 600}), auth, {}),
        (
            "413 chunked",
            chunked_body,
            auth | {"Transfer-Encoding": "chunked"},
            {"wsgi.input_terminated": True},
        ),
        ("400 bad content length", ok, auth, {"CONTENT_LENGTH": "x"}),
    ]
    return cases


def _comparable(status, headers, body) -> tuple:
    headers = [(k, v) for k, v in headers]
    ids = [v for k, v in headers if k == "X-Request-ID"]
    assert len(ids) == 1
    if ids[0] != "req-parity-1":
        assert re.fullmatch(r"[0-9a-f]{32}", ids[0])
        headers = [(k, "<random>" if k == "X-Request-ID" else v) for k, v in headers]
    return status, sorted(headers), body


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = orjson.loads(record.getMessage())
        line.pop("ts")
        assert line.pop("latency_ms") > 0
        if not re.fullmatch(r"req-parity-1", line["request_id"]):
            line["request_id"] = "<random>"
        self.records.append(line)


def _metric_counts(app) -> list[str]:
    from prometheus_client import generate_latest

    text = generate_latest(app.extensions["zeroth.metrics"].registry).decode()
    # Durations differ from run to run; how many requests landed where does not.
    return sorted(
        line
        for line in text.splitlines()
        if line
        and not line.startswith("#")
        and "_created" not in line
        and not line.startswith("zeroth_request_duration_seconds_bucket")
        and not line.startswith("zeroth_request_duration_seconds_sum")
    )


@pytest.mark.parametrize("log_inputs", ["0", "1"])
def test_lean_path_answers_as_flask_does(models_list: Path, monkeypatch, log_inputs) -> None:
    from server import create_app
    from zeroth.api.fast import EmbeddingsFastPath
    from zeroth.api.request_log import log as request_logger
    from zeroth.config import load_models_list
    from zeroth.registry import ModelRegistry

    monkeypatch.setenv("ZEROTH_LOG_INPUTS", log_inputs)
    registry = ModelRegistry.load(load_models_list(models_list))
    kw = dict(registry=registry, api_keys=[KEY.encode()], max_body_bytes=4000)
    lean = create_app(models_list, **kw)
    monkeypatch.setenv("ZEROTH_FAST_PATH", "0")
    flask = create_app(models_list, **kw)
    monkeypatch.delenv("ZEROTH_FAST_PATH")
    assert isinstance(lean.wsgi_app, EmbeddingsFastPath)
    assert not isinstance(flask.wsgi_app, EmbeddingsFastPath)

    lines = _Lines()
    request_logger.addHandler(lines)
    try:
        answers = {}
        for which, app in (("lean", lean), ("flask", flask)):
            chunked = io.BytesIO(orjson.dumps({"input": ["cat"] * 2000}))
            for name, body, headers, extra in _requests(b""):
                environ = _environ(body, headers, **extra)
                if name == "413 chunked":
                    environ.pop("CONTENT_LENGTH", None)
                    environ["wsgi.input"] = chunked
                answers[which, name] = _comparable(*_wsgi(app, environ))
        served = lean.wsgi_app.served
        log_lines = lines.records
    finally:
        request_logger.removeHandler(lines)

    names = [name for name, *_ in _requests(b"")]
    assert served == len(names)  # every one of them went the lean way
    statuses = set()
    for name in names:
        assert answers["lean", name] == answers["flask", name], name
        statuses.add(answers["lean", name][0][:3])
    assert statuses == {"200", "400", "401", "404", "413", "415"}
    assert log_lines[: len(names)] == log_lines[len(names) :]
    assert _metric_counts(lean) == _metric_counts(flask)


def test_lean_path_on_500_and_503(models_list: Path, monkeypatch, caplog) -> None:
    from server import create_app
    from zeroth.config import load_models_list
    from zeroth.registry import ModelRegistry

    body = orjson.dumps({"input": "the cat"})
    headers = {"Content-Type": "application/json", "X-Request-ID": "req-parity-1"}
    monkeypatch.setenv("ZEROTH_FAST_PATH", "0")
    cold_flask = create_app(models_list, load=False)
    monkeypatch.delenv("ZEROTH_FAST_PATH")
    cold_lean = create_app(models_list, load=False)
    assert _comparable(*_wsgi(cold_lean, _environ(body, headers))) == _comparable(
        *_wsgi(cold_flask, _environ(body, headers))
    )
    assert cold_lean.wsgi_app.served == 1

    registry = ModelRegistry.load(load_models_list(models_list))
    monkeypatch.setenv("ZEROTH_FAST_PATH", "0")
    flask = create_app(models_list, registry=registry)
    monkeypatch.delenv("ZEROTH_FAST_PATH")
    lean = create_app(models_list, registry=registry)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(registry.get("tiny").embedder, "embed_ids", broken)
    with caplog.at_level(logging.ERROR):
        a = _comparable(*_wsgi(lean, _environ(body, headers)))
        b = _comparable(*_wsgi(flask, _environ(body, headers)))
    assert a == b and a[0].startswith("500") and b"secret" not in a[2]
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 2 and logged[0].getMessage() == logged[1].getMessage()
    assert lean.wsgi_app.served == 1


def test_lean_path_steps_aside_for_other_hooks(models_list: Path) -> None:
    from flask import request

    from server import create_app
    from zeroth.api.errors import ApiError

    app = create_app(models_list)
    client = app.test_client()
    assert client.post("/v1/embeddings", json={"input": "cat"}).status_code == 200
    assert app.wsgi_app.served == 1
    # (Flask refuses new hooks once it has served a request itself: add it now.)

    @app.before_request
    def _deny():
        if request.path.startswith("/v1/"):
            raise ApiError(403, "no", code="denied")

    assert client.post("/v1/embeddings", json={"input": "cat"}).status_code == 403
    assert client.get("/health").status_code == 200  # other routes: always Flask
    assert app.wsgi_app.served == 1
