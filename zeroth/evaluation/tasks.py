"""The evaluation tasks: loaders for the formats in ../shared/eval/SOURCES.md, and their metrics.

Every task takes an `encode(texts) -> np.ndarray [n, H]` function (any embedder: a checkpoint,
an OpenAI-compatible server) and the eval directory, and returns {metric: value} with scores
×100. Default tasks score tuning-side dev splits; `*-train` tasks exist for choosing defaults
without touching the dev numbers.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

Encode = Callable[[Sequence[str]], np.ndarray]


# --- loaders -------------------------------------------------------------------------------


def load_stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """STS-B: tab-separated, no header, first seven columns (some lines carry two extra)."""
    s1, s2, gold = [], [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                continue
            gold.append(float(cols[4]))
            s1.append(cols[5])
            s2.append(cols[6])
    return s1, s2, np.array(gold)


def load_sick(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """SICK: tab-separated with a header; relatedness_score is the gold."""
    s1, s2, gold = [], [], []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        a, b, g = (header.index(c) for c in ("sentence_A", "sentence_B", "relatedness_score"))
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < len(header):
                continue
            s1.append(cols[a])
            s2.append(cols[b])
            gold.append(float(cols[g]))
    return s1, s2, np.array(gold)


def strip_pos(word: str) -> str:
    """MEN lemma form: 'sun-n' -> 'sun' (only a trailing -n/-v/-j is a POS tag)."""
    head, sep, tag = word.rpartition("-")
    return head if sep and tag in ("n", "v", "j") else word


def load_men(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    w1, w2, gold = [], [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            cols = line.split()
            if len(cols) != 3:
                continue
            w1.append(strip_pos(cols[0]))
            w2.append(strip_pos(cols[1]))
            gold.append(float(cols[2]))
    return w1, w2, np.array(gold)


def load_banking77(path: Path) -> tuple[list[str], list[str]]:
    """CSV with header text,category; some texts span lines, so only a CSV parser reads it."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            texts.append(row["text"])
            labels.append(row["category"])
    return texts, labels


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_scifact(
    directory: Path,
) -> tuple[list[str], list[str], list[str], list[str], dict[str, set[str]]]:
    """BEIR layout: (doc_ids, docs, query_ids, queries, qrels); a doc is title + " " + text."""
    corpus_path = directory / "corpus.jsonl.gz"
    if not corpus_path.exists():
        corpus_path = directory / "corpus.jsonl"
    corpus = _read_jsonl(corpus_path)
    doc_ids = [str(d["_id"]) for d in corpus]
    docs = [(d.get("title") or "") + " " + (d.get("text") or "") for d in corpus]
    qrels: dict[str, set[str]] = {}
    with open(directory / "qrels" / "train.tsv", encoding="utf-8") as fh:
        next(fh)  # header: query-id corpus-id score
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 3 and float(cols[2]) > 0:
                qrels.setdefault(cols[0], set()).add(cols[1])
    queries = [q for q in _read_jsonl(directory / "queries.jsonl") if str(q["_id"]) in qrels]
    return doc_ids, docs, [str(q["_id"]) for q in queries], [q["text"] for q in queries], qrels


# --- metrics -------------------------------------------------------------------------------


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def pair_scores(encode: Encode, s1: list[str], s2: list[str], gold: np.ndarray) -> dict:
    # One call for both sides: shared sentences and batching are the embedder's business.
    vecs = encode(s1 + s2)
    cos = cosine_rows(vecs[: len(s1)], vecs[len(s1) :])
    return {
        "spearman": 100 * float(spearmanr(cos, gold).statistic),
        "pearson": 100 * float(pearsonr(cos, gold).statistic),
    }


def ndcg_at_k(
    scores: np.ndarray, doc_ids: list[str], query_ids: list[str], qrels, k: int = 10
) -> float:
    """Binary-relevance nDCG@k (as BEIR/pytrec_eval compute it), averaged over queries."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = []
    for qi, qid in enumerate(query_ids):
        order = top[qi][np.argsort(-scores[qi, top[qi]], kind="stable")]
        relevant = qrels[qid]
        gains = np.array([doc_ids[d] in relevant for d in order], dtype=np.float64)
        ideal = discounts[: min(len(relevant), k)].sum()
        values.append(float((gains * discounts[:k]).sum() / ideal))
    return float(np.mean(values))


def logreg_cv_accuracy(x: np.ndarray, labels: list[str], folds: int = 5, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=100, tol=1e-3))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, np.array(labels), cv=cv).mean())


# --- tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    name: str
    title: str  # column header
    main: str  # the metric the table shows
    files: tuple[str, ...]  # relative to the eval dir; a task whose files are missing is skipped
    run: Callable[[Encode, Path], dict]


def _stsb(split: str):
    def run(encode: Encode, root: Path) -> dict:
        return pair_scores(encode, *load_stsb(root / f"stsbenchmark/sts-{split}.csv"))

    return run


def _sick(split: str):
    def run(encode: Encode, root: Path) -> dict:
        return pair_scores(encode, *load_sick(root / f"sick/SICK_{split}.txt"))

    return run


def _men(encode: Encode, root: Path) -> dict:
    return pair_scores(encode, *load_men(root / "wordsim/MEN_dataset_lemma_form.dev"))


def _scifact(encode: Encode, root: Path) -> dict:
    doc_ids, docs, query_ids, queries, qrels = load_scifact(root / "scifact")
    d = encode(docs)
    q = encode(queries)
    scores = q @ d.T
    return {"ndcg@10": 100 * ndcg_at_k(scores, doc_ids, query_ids, qrels, 10)}


def _banking77(encode: Encode, root: Path) -> dict:
    texts, labels = load_banking77(root / "banking77/train.csv")
    return {"accuracy": 100 * logreg_cv_accuracy(encode(texts), labels)}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("stsb", "STS-B dev", "spearman", ("stsbenchmark/sts-dev.csv",), _stsb("dev")),
        Task("sick", "SICK-R trial", "spearman", ("sick/SICK_trial.txt",), _sick("trial")),
        Task(
            "scifact",
            "SciFact nDCG@10",
            "ndcg@10",
            ("scifact/queries.jsonl", "scifact/qrels/train.tsv"),
            _scifact,
        ),
        Task("banking77", "Banking77 acc", "accuracy", ("banking77/train.csv",), _banking77),
        Task("men", "MEN dev", "spearman", ("wordsim/MEN_dataset_lemma_form.dev",), _men),
        # Tuning splits: choose defaults here, report the dev splits above.
        Task(
            "stsb-train",
            "STS-B train",
            "spearman",
            ("stsbenchmark/sts-train.csv",),
            _stsb("train"),
        ),
        Task("sick-train", "SICK-R train", "spearman", ("sick/SICK_train.txt",), _sick("train")),
    )
}
DEFAULT_TASKS = ("stsb", "sick", "scifact", "banking77", "men")


def available(task: Task, root: Path) -> bool:
    return all((root / f).exists() for f in task.files)
