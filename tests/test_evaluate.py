"""The evaluation harness on tiny fixtures written in the shared files' formats."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.test_postprocess import make_checkpoint
from zeroth.checkpoint import Checkpoint
from zeroth.evaluation import tasks as et
from zeroth.evaluation.harness import (
    api_encoder,
    checkpoint_encoder,
    decode_embedding,
    evaluate,
    main,
)
from zeroth.model import StaticEmbedder

REPO = Path(__file__).resolve().parents[1]

STS = [  # (gold, s1, s2): the gold order is the order of the angles the mock encoder assigns
    (5.0, "the cat sat", "the cat sat on the mat"),
    (3.8, 'a "quick dog', "a quick dog ran"),  # unbalanced quote: must be split on tabs
    (2.5, "the bird flew", "a bird"),
    (1.0, "the sea", "a big tree"),
    (0.2, "the old log", "blue"),
]
SICK = [(4.7, "the dog ran", "a dog ran"), (3.1, "the cat", "a bird"), (1.2, "sea", "mat")]
MEN = [("cat-n", "dog-n", 45.0), ("red-j", "blue-j", 30.0), ("sat-v", "tree-n", 4.0)]
DOCS = [  # (id, title, text)
    ("d1", "cat", "the cat sat on the mat"),
    ("d2", "dog", "a quick brown dog ran"),
    ("d3", "", "the bird flew over a tree"),
]
QUERIES = [("q1", "cat on a mat", ["d1"]), ("q2", "a dog ran", ["d2"]), ("q3", "unjudged", [])]
BANKING = {
    "card_arrival": ["the cat sat", "the cat", "cat sat on\na mat", "a cat", "the cat ran"],
    "top_up": ["blue sea", "the big sea", "sea, sea", "old blue sea", "a small sea"],
}


def write_eval_dir(root: Path) -> Path:
    (root / "stsbenchmark").mkdir(parents=True)
    lines = []
    for i, (gold, a, b) in enumerate(STS):
        extra = "\tsource-licence\tmore" if i == 1 else ""  # some lines carry two extra columns
        lines.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{gold:.3f}\t{a}\t{b}{extra}")
    (root / "stsbenchmark" / "sts-dev.csv").write_text("\n".join(lines) + "\n")
    (root / "stsbenchmark" / "sts-train.csv").write_text("\n".join(lines) + "\n")
    (root / "sick").mkdir()
    rows = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
    rows += [f"{i}\t{a}\t{b}\t{g}\tNEUTRAL" for i, (g, a, b) in enumerate(SICK)]
    (root / "sick" / "SICK_trial.txt").write_text("\n".join(rows) + "\n")
    (root / "wordsim").mkdir()
    men = [f"{a} {b} {s:.6f}" for a, b, s in MEN]
    (root / "wordsim" / "MEN_dataset_lemma_form.dev").write_text("\n".join(men) + "\n")
    (root / "scifact" / "qrels").mkdir(parents=True)
    corpus = [json.dumps({"_id": i, "title": t, "text": x, "metadata": {}}) for i, t, x in DOCS]
    (root / "scifact" / "corpus.jsonl.gz").write_bytes(gzip.compress("\n".join(corpus).encode()))
    queries = [json.dumps({"_id": q, "text": t, "metadata": {}}) for q, t, _ in QUERIES]
    (root / "scifact" / "queries.jsonl").write_text("\n".join(queries) + "\n")
    qrels = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, _, ds in QUERIES for d in ds]
    (root / "scifact" / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n")
    (root / "banking77").mkdir()
    import csv

    with open(root / "banking77" / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "category"])
        for label, texts in BANKING.items():
            writer.writerows([t, label] for t in texts)
    return root


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    return write_eval_dir(tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    make_checkpoint(path, add_bos=True, offset=1.0)
    return path


# --- loaders -------------------------------------------------------------------------------


def test_loaders_parse_the_shared_formats(eval_dir):
    s1, s2, gold = et.load_stsb(eval_dir / "stsbenchmark/sts-dev.csv")
    assert s1[1] == 'a "quick dog' and s2[1] == "a quick dog ran"
    np.testing.assert_allclose(gold, [g for g, _, _ in STS])
    a, b, g = et.load_sick(eval_dir / "sick/SICK_trial.txt")
    assert (a, b, list(g)) == ([x[1] for x in SICK], [x[2] for x in SICK], [x[0] for x in SICK])
    w1, w2, g = et.load_men(eval_dir / "wordsim/MEN_dataset_lemma_form.dev")
    assert w1 == ["cat", "red", "sat"] and w2 == ["dog", "blue", "tree"]
    texts, labels = et.load_banking77(eval_dir / "banking77/train.csv")
    assert len(texts) == 10 and "cat sat on\na mat" in texts and "sea, sea" in texts
    doc_ids, docs, qids, queries, qrels = et.load_scifact(eval_dir / "scifact")
    assert doc_ids == ["d1", "d2", "d3"]
    assert docs[0] == "cat the cat sat on the mat" and docs[2] == " the bird flew over a tree"
    assert qids == ["q1", "q2"]  # queries without judgements are not scored
    assert qrels == {"q1": {"d1"}, "q2": {"d2"}}


def test_strip_pos_only_strips_pos_tags():
    assert et.strip_pos("sun-n") == "sun"
    assert et.strip_pos("t-shirt-n") == "t-shirt"
    assert et.strip_pos("well-being") == "well-being"


# --- metrics with mock encoders ---------------------------------------------------------------


def angle_encoder(angles: dict[str, float]):
    def encode(texts):
        return np.array([[np.cos(angles[t]), np.sin(angles[t])] for t in texts])

    return encode


def sts_angles(pairs, sign: float) -> dict[str, float]:
    """Angles making cos(s1, s2) follow (sign=1) or reverse (sign=-1) the gold order."""
    angles: dict[str, float] = {}
    for k, (gold, a, b) in enumerate(pairs):
        base = 10.0 * k
        angles[a] = base
        angles[b] = base + (gold / 5.5 if sign < 0 else (5.5 - gold) / 5.5)
    return angles


def test_pair_spearman_follows_the_gold_order(eval_dir):
    perfect = et.TASKS["stsb"].run(angle_encoder(sts_angles(STS, 1)), eval_dir)
    assert perfect["spearman"] == pytest.approx(100.0)
    reversed_ = et.TASKS["stsb"].run(angle_encoder(sts_angles(STS, -1)), eval_dir)
    assert reversed_["spearman"] == pytest.approx(-100.0)
    sick = et.TASKS["sick"].run(angle_encoder(sts_angles(SICK, 1)), eval_dir)
    assert sick["spearman"] == pytest.approx(100.0)


def test_ndcg_at_k_by_hand():
    doc_ids = ["a", "b", "c", "d"]
    scores = np.array([[0.9, 0.1, 0.8, 0.5], [0.1, 0.2, 0.3, 0.4]])
    qrels = {"q1": {"a", "d"}, "q2": {"a"}}
    # q1: relevant at ranks 1 and 3 -> (1 + 1/log2 4) / (1 + 1/log2 3); q2: rank 4, k=3 -> 0
    q1 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert et.ndcg_at_k(scores, doc_ids, ["q1", "q2"], qrels, k=3) == pytest.approx(q1 / 2)
    assert et.ndcg_at_k(scores[1:], doc_ids, ["q2"], qrels, k=4) == pytest.approx(1 / np.log2(5))


def one_hot_encoder(groups: dict[str, int], dim: int, rng=None):
    def encode(texts):
        out = np.zeros((len(texts), dim))
        for i, t in enumerate(texts):
            out[i, groups[t]] = 1.0
        if rng is not None:
            out += 0.01 * rng.standard_normal(out.shape)
        return out

    return encode


def test_scifact_perfect_and_second_place(eval_dir):
    _, docs, _, queries, _ = et.load_scifact(eval_dir / "scifact")
    groups = {d: i for i, d in enumerate(docs)}
    groups.update({"cat on a mat": 0, "a dog ran": 1})
    assert et.TASKS["scifact"].run(one_hot_encoder(groups, 3), eval_dir)["ndcg@10"] == 100.0

    def second(texts):  # each query scores a wrong doc highest and its own doc second
        out = one_hot_encoder(groups, 3)(texts)
        for i, t in enumerate(texts):
            if t in queries:
                out[i] = 0.5 * out[i] + np.roll(out[i], 1)
        return out

    score = et.TASKS["scifact"].run(second, eval_dir)["ndcg@10"]
    assert score == pytest.approx(100 / np.log2(3))


def test_banking77_accuracy_separable_and_not(eval_dir):
    groups = {t: i for i, texts in enumerate(BANKING.values()) for t in texts}
    rng = np.random.default_rng(0)
    assert et.TASKS["banking77"].run(one_hot_encoder(groups, 2, rng), eval_dir)["accuracy"] == 100
    crossed = {t: (j % 2) for texts in BANKING.values() for j, t in enumerate(texts)}
    chance = et.TASKS["banking77"].run(one_hot_encoder(crossed, 2, rng), eval_dir)["accuracy"]
    assert chance < 80


# --- end to end: checkpoint and API modes ------------------------------------------------------


def test_cli_on_a_checkpoint_writes_table_and_json(tiny_ckpt, eval_dir, tmp_path, capsys):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    argv = ["--checkpoint", str(tiny_ckpt), "--eval-dir", str(eval_dir), "--no-progress"]
    assert main(argv + ["--label", "tiny", "--markdown", str(md), "--json", str(js)]) == 0
    table = md.read_text()
    assert table == capsys.readouterr().out
    assert table.splitlines()[0].startswith("| model | STS-B dev | SICK-R trial | SciFact")
    assert table.splitlines()[2].startswith("| tiny |")
    data = json.loads(js.read_text())
    tasks = data["rows"][0]["tasks"]
    assert set(tasks) == {"stsb", "sick", "scifact", "banking77", "men"}
    for name, scores in tasks.items():
        value = scores[et.TASKS[name].main]
        assert -100 <= value <= 100
        assert f"{value:.1f}" in table.splitlines()[2]


def test_missing_task_data_is_skipped(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "sick").mkdir()
    (tmp_path / "sick" / "SICK_trial.txt").write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        + "".join(f"{i}\t{a}\t{b}\t{g}\tNEUTRAL\n" for i, (g, a, b) in enumerate(SICK))
    )
    results = evaluate(checkpoint_encoder(tiny_ckpt, progress=False), ["stsb", "sick"], tmp_path)
    assert list(results) == ["sick"]
    assert "skipping stsb" in capsys.readouterr().err


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    model: StaticEmbedder
    requests: list[dict]

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        vecs = self.model.encode(body["input"]).astype("<f4")
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(v).decode()}
            for i, v in enumerate(vecs)
        ][::-1]  # out of order on purpose: clients must sort by index
        payload = json.dumps(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server(tiny_ckpt):
    handler = type(
        "Handler",
        (_EmbeddingsHandler,),
        {"model": StaticEmbedder.from_pretrained(tiny_ckpt), "requests": []},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # a port the kernel picks
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", handler.requests
    server.shutdown()
    server.server_close()


def test_api_mode_matches_checkpoint_mode(api_server, tiny_ckpt, eval_dir):
    url, requests = api_server
    tasks = ["stsb", "sick", "scifact", "men"]
    via_api = evaluate(
        api_encoder(url, "tiny-model", batch_size=3, progress=False), tasks, eval_dir
    )
    direct = evaluate(checkpoint_encoder(tiny_ckpt, progress=False), tasks, eval_dir)
    for name in tasks:
        main_metric = et.TASKS[name].main
        assert via_api[name][main_metric] == pytest.approx(direct[name][main_metric], abs=1e-6)
    assert requests and all(len(r["input"]) <= 3 for r in requests)
    assert {r["encoding_format"] for r in requests} == {"base64"}
    assert {r["model"] for r in requests} == {"tiny-model"}


def test_cli_rejects_api_without_model(capsys):
    with pytest.raises(SystemExit):
        main(["--api-url", "http://127.0.0.1:1/v1"])
    assert "--model" in capsys.readouterr().err


def test_runs_as_a_module(tiny_ckpt, eval_dir):
    """`python -m zeroth.evaluation`, as the README shows it (bench/ is not needed)."""
    argv = ["--checkpoint", str(tiny_ckpt), "--eval-dir", str(eval_dir), "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "zeroth.evaluation", *argv, "--tasks", "stsb", "--label", "t"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, _, row = proc.stdout.splitlines()
    assert header == "| model | STS-B dev |" and row.startswith("| t | ")


def test_decode_embedding_accepts_base64_and_floats():
    v = np.array([0.5, -1.25, 3.0], dtype="<f4")
    np.testing.assert_array_equal(decode_embedding(base64.b64encode(v.tobytes()).decode()), v)
    np.testing.assert_array_equal(decode_embedding([0.5, -1.25, 3.0]), v)


def test_quality_table_scores_each_variant(tmp_path, eval_dir, monkeypatch):
    """zeroth.evaluation.quality_table: one row per post-processing variant of a seed."""
    from extract import postprocess
    from zeroth.evaluation import quality_table

    # The real prior tokenises 200k words; 5k cover the same code (as in test_postprocess).
    monkeypatch.setattr(postprocess, "PRIOR_WORDS", 5000)
    seed = tmp_path / "seed"
    make_checkpoint(seed, add_bos=True)
    md, js = tmp_path / "q.md", tmp_path / "q.json"
    variants = ["seed", "sif", "center", "corpus"]
    tasks = ["stsb", "sick"]
    argv = ["--base", f"tiny={seed}", "--variants", *variants, "--tasks", *tasks]
    argv += ["--eval-dir", str(eval_dir), "--markdown", str(md), "--json", str(js)]
    assert quality_table.main(argv) == 0
    records = json.loads(js.read_text())
    assert [r["variant"] for r in records] == variants
    assert {(r["base"], r["norm"]) for r in records} == {("tiny", "final")}
    assert records[3]["flags"][:1] == ["--corpus"]
    assert records[3]["flags"][1].endswith("stsb-train-sentences.txt")
    table = md.read_text().splitlines()
    assert table[0] == "| model | STS-B dev | SICK-R trial |" and len(table) == 2 + len(variants)
    assert table[2].startswith("| tiny (final norm): plain mean, no post-processing |")
    # The seed variant changes nothing: it scores as the checkpoint itself does.
    direct = evaluate(checkpoint_encoder(seed, progress=False), tasks, eval_dir, progress=False)
    for task in tasks:
        main_metric = et.TASKS[task].main
        assert records[0]["tasks"][task][main_metric] == pytest.approx(direct[task][main_metric])

    # Each of the others changes the vectors (5 pairs rank too coarsely to show it).
    base = Checkpoint.from_pretrained(seed)
    texts = [a for _, a, _ in STS] + [b for _, _, b in SICK]
    plain = StaticEmbedder.from_pretrained(seed).encode(texts)
    corpus = quality_table.stsb_train_corpus(eval_dir, tmp_path / "corpus.txt")
    s1, s2, _ = et.load_stsb(eval_dir / "stsbenchmark" / "sts-train.csv")
    lines = corpus.read_text().splitlines()  # every train sentence once, unlabelled
    assert set(lines) == set(s1 + s2) and len(lines) == len(set(lines))
    for name in variants:
        flags = [f.replace("{corpus}", str(corpus)) for f in quality_table.VARIANTS[name][1]]
        encode, _ = quality_table.variant_encoder(base, flags, eval_dir)
        changed = np.abs(encode(texts) - plain).max() > 1e-4
        assert changed == (name != "seed"), name


def test_quality_table_takes_layer0_tables_and_refuses_imports(tmp_path, eval_dir, monkeypatch):
    """A layer-0 base (rows stored as computed, no norm) gets every variant; an imported model
    (rows as stored, no extraction table) is refused."""
    from extract import postprocess
    from zeroth.evaluation import quality_table

    monkeypatch.setattr(postprocess, "PRIOR_WORDS", 5000)
    seed = make_checkpoint(tmp_path / "seed", add_bos=True)
    rows = seed.token_rows()
    seed.manifest.norm = None
    seed.tensors = {"embed_tokens": rows}
    for name, table in (("l0", "layer0 output, RMS-normalised"), ("imported", None)):
        seed.manifest.extraction = {"table": table} if table else {}
        seed.save_pretrained(tmp_path / name)
    js = tmp_path / "q.json"
    argv = ["--variants", "seed", "usif", "--tasks", "stsb", "--eval-dir", str(eval_dir)]
    assert quality_table.main(["--base", f"tiny={tmp_path / 'l0'}", *argv, "--json", str(js)]) == 0
    records = json.loads(js.read_text())
    assert [(r["table"], r["norm"], r["variant"]) for r in records] == [
        ("layer0", None, "seed"),
        ("layer0", None, "usif"),
    ]
    assert records[0]["tasks"] != records[1]["tasks"]
    with pytest.raises(SystemExit) as exit_info:
        quality_table.main(["--base", f"tiny={tmp_path / 'imported'}", *argv])
    assert exit_info.value.code == 2


def test_sentence_transformers_reference_row(tiny_ckpt, eval_dir, tmp_path, capsys):
    from tests.static_models import save_static_embedding
    from zeroth.evaluation.harness import sentence_transformers_encoder

    folder = save_static_embedding(tmp_path / "teacher")
    js = tmp_path / "t.json"
    argv = ["--checkpoint", str(tiny_ckpt), "--sentence-transformers", str(folder)]
    argv += ["--eval-dir", str(eval_dir), "--tasks", "stsb", "--no-progress", "--json", str(js)]
    assert main(argv) == 0
    rows = json.loads(js.read_text())["rows"]
    assert [r["model"] for r in rows] == ["tiny", "teacher"]
    # The reference row is the library's own encode, scored like any other encoder.
    s1, s2, gold = et.load_stsb(eval_dir / "stsbenchmark" / "sts-dev.csv")
    want = et.pair_scores(sentence_transformers_encoder(folder, progress=False), s1, s2, gold)
    assert rows[1]["tasks"]["stsb"]["spearman"] == pytest.approx(want["spearman"])


def test_cli_needs_some_model(capsys):
    with pytest.raises(SystemExit):
        main(["--eval-dir", "."])
    assert "one of --checkpoint, --api-url or --sentence-transformers" in capsys.readouterr().err
