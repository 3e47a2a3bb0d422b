"""python -m index: sources, the tokenizer twin, vectors equal to the server's, Ray runs, resuming.

Fast tests call the pieces directly (no Ray); the Ray tests share one local Ray (2 CPUs, no
dashboard) and run the CLI in-process; the interruption test SIGKILLs a real `python -m index`.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from index.cli import SettingsChanged, check_settings, main
from index.embed import EmbedBatch, EmbedOptions
from index.shards import committed_shards, read_output, vector_column, written_ids
from index.sources import (
    InputError,
    JsonLinesDatasource,
    ParquetColumnsDatasource,
    detect_format,
    join_fields,
    json_schema,
    numbered_lines,
    read_documents,
    to_documents,
)
from tests.conftest import WORDS, make_app
from tests.real_server import ROOT, SMOLLM2_DIR
from zeroth.model import StaticEmbedder

SCIFACT = ROOT.parent / "shared" / "eval" / "scifact" / "corpus.jsonl.gz"
# SmolLM2's tokenizer has an exact tiktoken twin, which the indexer and these tests rely on.
# The fast tests skip without it (they download nothing); the slow ones build it.
needs_smollm2 = pytest.mark.skipif(
    not (SMOLLM2_DIR / "manifest.json").is_file(), reason="SmolLM2 not built (make smollm2)"
)
needs_scifact = pytest.mark.skipif(not SCIFACT.is_file(), reason=f"no {SCIFACT}")

EDGE_TEXTS = [
    "The food was delicious and the waiter was friendly.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。 🍣🍣",
    "def add(a, b):\n    return a + b\n\n\n",
    "I'M sure they'll say it's 12345678 or 3.14159, don't you think?",
    "  leading and trailing spaces   ",
    "tabs\tand\r\nnewlines\n\n  \n",
    "a\x04b\x06c\x13 control characters",
    "\U00045678 unassigned plane \U000b0000",
    "<|endoftext|> special tokens <|im_start|>user",
    "x" * 300,
    "a",
]


def vectors_of(table: pa.Table) -> dict:
    column = table.column("vector").combine_chunks()
    flat = column.values.to_numpy().reshape(len(column), column.type.list_size)
    return dict(zip(table.column("id").to_pylist(), flat, strict=True))


def as_lists(rows) -> list[list[int]]:
    return [[int(i) for i in row] for row in rows]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        *WORDS,
        "don't",
        "I'VE",
        "3.5",
        "2024",
        "1234567",
        "é",
        "中文",
        "🙂",
        ",",
        "...",
        "\n",
        "\n\n",
        "  ",
        "\t",
        "'s",
        "x'll",
        "<|endoftext|>",
        "C++",
        "a-b",
        "ÅÄÖ",
    ]
    return [
        "".join(
            rng.choice(pieces) + rng.choice(["", " ", " ", "  "]) for _ in range(rng.randint(0, 40))
        )
        for _ in range(n)
    ]


# --- sources -------------------------------------------------------------------------------


def test_detect_format():
    assert detect_format(["a.txt", "b.TXT"]) == "text"
    assert detect_format(["c.jsonl.gz", "d.ndjson"]) == "jsonl"
    assert detect_format(["e.parquet"]) == "parquet"
    with pytest.raises(InputError, match="pass --format"):
        detect_format(["corpus.csv"])
    with pytest.raises(InputError, match="mix formats"):
        detect_format(["a.txt", "b.jsonl"])


def test_text_fields_join_like_join_fields_even_where_all_are_null():
    # pyarrow 26's binary_join_element_wise(null_handling="skip") drops the rows where every
    # value is null, which would move every later text onto the previous id.
    titles = ["t1", None, "", None, "t5 ", "t6"]
    texts = ["b1", None, "b3", "", "b5", None]
    batch = pa.table({"id": [f"d{i}" for i in range(6)], "title": titles, "text": texts})
    docs = to_documents(batch, "id", ["title", "text"])
    assert docs.column("id").to_pylist() == [f"d{i}" for i in range(6)]
    assert docs.column("text").to_pylist() == [
        join_fields(pair) for pair in zip(titles, texts, strict=True)
    ]
    assert docs.column("text").to_pylist() == ["t1 b1", "", "b3", "", "t5  b5", "t6"]


def test_text_lines_are_numbered_from_one():
    data = b"first\r\n\n  \nfourth\x0cstill fourth\nlast"
    assert numbered_lines(data).to_pylist() == [
        {"id": 1, "text": "first"},
        {"id": 4, "text": "fourth\x0cstill fourth"},
        {"id": 5, "text": "last"},
    ]
    named = numbered_lines(data, "docs.txt").column("id").to_pylist()
    assert named == ["docs.txt:1", "docs.txt:4", "docs.txt:5"]


def test_json_lines_are_parsed_in_chunks_of_whole_lines(tmp_path, monkeypatch):
    records = [{"id": f"d{i}", "text": "é" * (i % 7)} for i in range(50)]
    records.append({"id": "long", "text": "y" * (3 << 20)})  # longer than a chunk and Arrow's block
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))  # no newline at the end
    options = pajson.ParseOptions(explicit_schema=json_schema(records[0], "id", ["text"]))
    source = JsonLinesDatasource([str(path)], parse_options=options)
    monkeypatch.setattr(JsonLinesDatasource, "CHUNK_BYTES", 100)
    with pa.OSFile(str(path)) as f:
        tables = list(source._read_stream(f, str(path)))
    assert len(tables) > 10, "yielded as the file is read, not at its end"
    assert pa.concat_tables(tables).to_pylist() == records
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": \n')
    with pa.OSFile(str(path)) as f, pytest.raises(InputError, match="c.jsonl: "):
        list(source._read_stream(f, str(path)))


def test_readers_yield_documents_when_given_the_fields(tmp_path):
    records = [
        {"_id": "a", "title": "T", "text": "x", "n": 1},
        {"_id": "b", "title": "", "text": "y"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    options = pajson.ParseOptions(
        explicit_schema=json_schema(records[0], "_id", ["title", "text"]),
        unexpected_field_behavior="ignore",
    )
    source = JsonLinesDatasource(
        [str(path)], parse_options=options, fields=("_id", ["title", "text"])
    )
    with pa.OSFile(str(path)) as f:
        docs = pa.concat_tables(source._read_stream(f, str(path)))
    assert docs.to_pylist() == [{"id": "a", "text": "T x"}, {"id": "b", "text": "y"}]
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["p", "q"], "doc": [7, 8]}), parquet, row_group_size=1)
    source = ParquetColumnsDatasource([str(parquet)], columns=["doc", "body"])
    with pa.OSFile(str(parquet)) as f:
        tables = list(source._read_stream(f, str(parquet)))
    assert len(tables) == 2, "one table per row group"
    assert pa.concat_tables(tables).to_pylist() == [{"id": 7, "text": "p"}, {"id": 8, "text": "q"}]


def test_bad_inputs_fail_with_one_line(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_documents([str(tmp_path / "missing.jsonl")], "jsonl", check_only=True)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "1", "body": "x"}\n')
    with pytest.raises(InputError, match=r"no field 'text' \(fields: _id, body\)"):
        read_documents([str(corpus)], "jsonl", "_id", ["text"], check_only=True)
    with pytest.raises(InputError, match="no field 'id'"):
        read_documents([str(corpus)], "jsonl", "id", ["body"], check_only=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="first line is not JSON"):
        read_documents([str(bad)], "jsonl", check_only=True)
    arrays = tmp_path / "arrays.jsonl"
    arrays.write_text("[1, 2]\n")
    with pytest.raises(InputError, match="JSON objects"):
        read_documents([str(arrays)], "jsonl", check_only=True)
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"doc": [1], "text": ["x"]}), parquet)
    with pytest.raises(InputError, match="no field 'id'"):
        read_documents([str(parquet)], "parquet", check_only=True)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "same.txt").write_text("x\n"), (b / "same.txt").write_text("y\n")
    with pytest.raises(InputError, match="share a file name"):
        read_documents([str(a / "same.txt"), str(b / "same.txt")], "text", check_only=True)
    with pytest.raises(InputError, match="have no 'id'"):
        to_documents(pa.table({"id": ["a", None], "text": ["x", "y"]}), "id", ["text"])
    with pytest.raises(InputError, match="must be a string or an integer"):
        to_documents(pa.table({"id": [1.5], "text": ["x"]}), "id", ["text"])
    with pytest.raises(InputError, match="is not text"):
        to_documents(pa.table({"id": [1], "text": [[1, 2]]}), "id", ["text"])


def test_cli_errors_exit_2_before_ray_starts(tmp_path, tiny_ckpt, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "text": "the cat"}\n')
    assert main([str(corpus), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path)]) == 2
    assert "not a zeroth checkpoint" in capsys.readouterr().err
    out = ["--out", str(tmp_path / "o"), "--checkpoint", str(tiny_ckpt)]
    assert main([str(corpus), *out, "--text-field", "body"]) == 2
    assert "no field 'body'" in capsys.readouterr().err
    assert main([str(tmp_path / "c.csv"), *out]) == 2
    assert "pass --format" in capsys.readouterr().err
    assert main([str(tmp_path / "gone.jsonl"), *out]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- settings ------------------------------------------------------------------------------


def test_settings_are_recorded_then_enforced(tmp_path):
    check_settings(tmp_path, {"max_tokens": 8192, "pooling": "mean"})
    check_settings(tmp_path, {"max_tokens": 8192, "pooling": "mean"})
    with pytest.raises(SettingsChanged, match=r"other settings \(max_tokens\)"):
        check_settings(tmp_path, {"max_tokens": 512, "pooling": "mean"})


# --- the embedding callable, against the server's own code -----------------------------------


def embed_table(options: EmbedOptions, ids: list, texts: list[str], **kwargs) -> pa.Table:
    return EmbedBatch(options, **kwargs)(pa.table({"id": ids, "text": texts}))


def server_vectors(client, model: str, texts: list[str]) -> np.ndarray:
    resp = client.post(
        "/v1/embeddings", json={"model": model, "input": texts, "encoding_format": "base64"}
    )
    assert resp.status_code == 200, resp.get_json()
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in resp.get_json()["data"]]
    return np.stack(rows)


def test_vectors_equal_the_servers(tiny_ckpt, client):
    texts = ["the cat sat on the mat", "a quick brown dog", "hello world " * 20, "sea"]
    ids = [f"doc-{i}" for i in range(len(texts))]
    got = vectors_of(embed_table(EmbedOptions(checkpoint=str(tiny_ckpt)), ids, texts))
    want = server_vectors(client, "tiny", texts)
    np.testing.assert_array_equal(np.stack([got[i] for i in ids]), want)
    # Long inputs cut as the server's on_overflow: truncate cuts them.
    options = EmbedOptions(checkpoint=str(tiny_ckpt), max_tokens=4)
    got = vectors_of(embed_table(options, ids, texts))
    np.testing.assert_array_equal(
        np.stack([got[i] for i in ids]), server_vectors(client, "tiny-truncate", texts)
    )
    raw = vectors_of(
        embed_table(EmbedOptions(checkpoint=str(tiny_ckpt), normalize=False), ids, texts)
    )
    np.testing.assert_array_equal(
        np.stack([raw[i] for i in ids]), server_vectors(client, "tiny-raw", texts)
    )


def test_rows_keep_their_own_vectors_when_some_are_skipped_or_empty(tiny_ckpt):
    texts = ["the cat", "", "a dog ran", "bird", "   ", "the sea"]
    ids = list(range(10, 16))
    model = StaticEmbedder.from_pretrained(tiny_ckpt)
    skip = pa.array([12], pa.int64())
    out = embed_table(EmbedOptions(checkpoint=str(tiny_ckpt)), ids, texts, skip=skip)
    got = vectors_of(out)
    # "" and "   " have only the BOS token with this tokenizer: they are embedded like the server.
    assert sorted(got) == [10, 11, 13, 14, 15]
    for i, text in zip(ids, texts, strict=True):
        if i in got:
            np.testing.assert_array_equal(got[i], model.encode([text])[0])
    assert out.schema.field("vector").type == pa.list_(pa.float32(), model.dim)


def test_documents_without_tokens_are_left_out(tiny_ckpt_weighted):
    # This model adds no BOS: an empty text has no tokens, and the server answers 400 for it.
    out = embed_table(
        EmbedOptions(checkpoint=str(tiny_ckpt_weighted)), ["a", "b", "c"], ["the cat", "", "dog"]
    )
    assert out.column("id").to_pylist() == ["a", "c"]
    empty = embed_table(EmbedOptions(checkpoint=str(tiny_ckpt_weighted)), ["b"], [""])
    assert empty.num_rows == 0 and empty.schema.field("vector").type.list_size == 8


def test_vector_column_is_zero_copy_fixed_size_list():
    v = np.arange(12, dtype=np.float32).reshape(3, 4)
    col = vector_column(v)
    assert col.type == pa.list_(pa.float32(), 4)
    np.testing.assert_array_equal(col.values.to_numpy().reshape(3, 4), v)


# --- the real model: SciFact, against the server --------------------------------------------


@pytest.fixture(scope="module")
def scifact_docs() -> list[dict]:
    with gzip.open(SCIFACT, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(400), f, strict=False)]


@needs_smollm2
@needs_scifact
def test_scifact_vectors_equal_the_servers(tmp_path, scifact_docs):
    models_list = tmp_path / "models_list.yaml"
    models_list.write_text(f"models:\n  m:\n    path: {SMOLLM2_DIR}\n")
    client = make_app(models_list).test_client()
    docs = scifact_docs[:64]
    texts = [join_fields([d["title"], d["text"]]) for d in docs] + EDGE_TEXTS
    ids = [d["_id"] for d in docs] + [f"edge{i}" for i in range(len(EDGE_TEXTS))]
    batch = EmbedBatch(EmbedOptions(checkpoint=str(SMOLLM2_DIR)))
    assert batch.model.text.twin is not None, batch.model.text.twin_why  # SmolLM2 has an exact twin
    got = vectors_of(batch(pa.table({"id": ids, "text": texts})))
    want = server_vectors(client, "m", texts)
    mine = np.stack([got[i] for i in ids])
    cos = np.sum(mine * want, 1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(mine, want, atol=1e-6)


@needs_smollm2
@needs_scifact
def test_smollm2_twin_tokenizes_all_of_scifact_like_tokenizers():
    model = StaticEmbedder.from_pretrained(SMOLLM2_DIR)
    with gzip.open(SCIFACT, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    texts = [join_fields([d["title"], d["text"]]) for d in docs] + EDGE_TEXTS
    assert model.text.twin is not None, model.text.twin_why
    # Against tokenizers' own pipeline, both of the twin's output forms.
    plain = model.tokenizer.encode_batch_fast(
        texts, add_special_tokens=model.text.add_special_tokens
    )
    want = [e.ids for e in plain]
    assert as_lists(model.text.tokenize_arrays(texts)) == want
    assert model.tokenize(texts) == want
    assert model.text.twin is not None  # the first texts' cross-check agreed


# --- Ray runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    # Workers inherit this environment: one thread each, and this checkout importable.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    if ray.is_initialized():  # something started a default one (all CPUs): ours instead
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run_cli(capsys, *args: str) -> dict:
    assert main([*args, "--batch-size", "64", "--shard-rows", "100"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def check_against_model(out: Path, ckpt: Path, texts: dict) -> None:
    """Every document exactly once, each with the vector StaticEmbedder gives its text."""
    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(texts)
    assert set(ids) == set(texts)
    got = vectors_of(table)
    model = StaticEmbedder.from_pretrained(ckpt)
    order = list(texts)
    want = model.encode([texts[i] for i in order])
    np.testing.assert_array_equal(np.stack([got[i] for i in order]), want)


@pytest.mark.slow
def test_sources_through_ray(tmp_path, tiny_ckpt, local_ray, capsys):
    rng = random.Random(3)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(500)]
    ckpt = ["--checkpoint", str(tiny_ckpt)]

    # Text: one document per non-blank line, id = line number (1-based).
    lines = tmp_path / "docs.txt"
    lines.write_text("\n".join(t if i % 50 else "" for i, t in enumerate(texts)) + "\n")
    by_line = {i + 1: t for i, t in enumerate(texts) if i % 50}
    summary = run_cli(capsys, str(lines), "--out", str(tmp_path / "t"), *ckpt)
    assert summary["documents"] == summary["new"] == len(by_line) and summary["shards"] > 1
    check_against_model(tmp_path / "t", tiny_ckpt, by_line)

    # JSONL with two text fields, in two files; ids are strings that look like numbers.
    records = [{"doc": f"{i:05d}", "title": t[:10], "body": t} for i, t in enumerate(texts)]
    for name, part in (("a.jsonl", records[:200]), ("b.jsonl.gz", records[200:])):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(tmp_path / name, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    fields = ["--id-field", "doc", "--text-field", "title,body"]
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz")]
    summary = run_cli(capsys, *inputs, "--out", str(tmp_path / "j"), *ckpt, *fields)
    assert summary["documents"] == 500 and summary["duplicate_ids"] == 0
    check_against_model(
        tmp_path / "j", tiny_ckpt, {r["doc"]: join_fields([r["title"], r["body"]]) for r in records}
    )
    assert pq.read_schema(committed_shards(tmp_path / "j")[0]).field("id").type == pa.string()

    # Parquet with integer ids and other columns around.
    table = pa.table({"n": list(range(500)), "extra": [1.0] * 500, "content": texts})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=128)
    args = [str(tmp_path / "docs.parquet"), "--id-field", "n", "--text-field", "content"]
    run_cli(capsys, *args, "--out", str(tmp_path / "p"), *ckpt, "--num-actors", "1")
    check_against_model(tmp_path / "p", tiny_ckpt, dict(enumerate(texts)))

    # A rerun skips what is written, picks up new documents, and refuses other settings.
    more = pa.table({"n": list(range(500, 600)), "extra": [1.0] * 100, "content": texts[:100]})
    pq.write_table(pa.concat_tables([table, more]), tmp_path / "docs.parquet")
    summary = run_cli(capsys, *args, "--out", str(tmp_path / "p"), *ckpt)
    assert (summary["skipped"], summary["new"], summary["documents"]) == (500, 100, 600)
    check_against_model(tmp_path / "p", tiny_ckpt, dict(enumerate(texts + texts[:100])))
    assert main([*args, "--out", str(tmp_path / "p"), *ckpt, "--max-tokens", "3"]) == 2
    assert "other settings (max_tokens)" in capsys.readouterr().err

    # A mistake only a worker sees (a missing id past the first record) still ends in one line.
    bad = tmp_path / "null-id.jsonl"
    bad.write_text('{"id": "a", "text": "the cat"}\n{"id": null, "text": "a dog"}\n')
    assert main([str(bad), "--out", str(tmp_path / "n"), *ckpt]) == 2
    assert capsys.readouterr().err.strip().endswith("error: 1 documents have no 'id'")
    assert not committed_shards(tmp_path / "n")


# --- interruption --------------------------------------------------------------------------


def wait_for_session_to_end(sid: int, timeout: float = 60) -> None:
    """Until no process of that session (the killed indexer and all Ray started) is left."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                alive.append(pid)
        if not alive:
            return
        assert time.monotonic() < deadline, f"processes {alive} outlived the killed indexer"
        time.sleep(0.2)


def synthetic_texts(length: int, count: int, seed: int = 0) -> list[str]:
    """`count` texts of `length` common words (about as many tokens)."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=length)) for _ in range(count)]


def scifact_or_synthetic() -> list[dict]:
    """SciFact where the eval data is present; else as many synthetic documents of its size,
    so that the interruption test runs on any checkout."""
    if SCIFACT.is_file():
        with gzip.open(SCIFACT, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    texts = synthetic_texts(250, count=5183)
    return [{"_id": str(i), "title": f"doc {i}", "text": t} for i, t in enumerate(texts)]


@pytest.mark.slow
@pytest.mark.usefixtures("smollm2_model")
def test_killed_midway_then_rerun_holds_every_document_once(tmp_path):
    """SIGKILL the whole indexer (driver and its Ray) after a shard is committed, rerun."""
    records = []
    base = scifact_or_synthetic()
    for k in range(4):
        records += [{**r, "_id": f"{r['_id']}#{k}"} for r in base]
    # Parquet, in row groups: several read tasks, and Ray Data's file listing, which needs a
    # CPU of its own next to the two actors (it waited forever when they held every CPU).
    corpus = tmp_path / "corpus.parquet"
    columns = {key: [r[key] for r in records] for key in ("_id", "title", "text")}
    pq.write_table(pa.table(columns), corpus, row_group_size=2000)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "index", str(corpus), "--out", str(out),
        "--checkpoint", str(SMOLLM2_DIR), "--id-field", "_id", "--text-field", "title,text",
        "--num-cpus", "2", "--batch-size", "500", "--shard-rows", "1000",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The first run tokenises with the server's own call (slower than the twin, which leaves
    # time to kill it midway); the rerun with the twin: the vectors must not tell them apart.
    proc = subprocess.Popen(
        [*cmd, "--tokenizer", "hf"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out.is_dir() and committed_shards(out)):
            assert proc.poll() is None, "the indexer ended before committing a shard"
            assert time.monotonic() < deadline, "no shard after 240 s"
            time.sleep(0.02)
    finally:
        # The driver at once; Ray's processes follow it (they die with their parent).
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for_session_to_end(proc.pid)
    before = written_ids(out)
    assert 0 < len(before) < len(records), "not killed midway"

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(before)
    assert summary["documents"] == len(records) and summary["duplicate_ids"] == 0
    assert not list(out.glob(".tmp-*"))

    table = read_output(out)
    ids = table.column("id").to_pylist()
    texts = {r["_id"]: join_fields([r["title"], r["text"]]) for r in records}
    assert len(ids) == len(set(ids)) == len(texts) and set(ids) == set(texts)
    got = vectors_of(table)
    sample = random.Random(0).sample(sorted(texts), 1500)
    sample += [i for i in before.to_pylist()[:200]]  # some written before the kill
    want = StaticEmbedder.from_pretrained(SMOLLM2_DIR).encode([texts[i] for i in sample])
    np.testing.assert_allclose(np.stack([got[i] for i in sample]), want, atol=1e-6)
