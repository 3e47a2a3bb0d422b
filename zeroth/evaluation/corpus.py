"""python -m zeroth.evaluation.corpus --out FILE: an alignment corpus from the eval data.

Writes the STS-B train sentences, the SICK train sentences and the SciFact documents (title +
text), one text per line, deduplicated, for `python -m extract --teacher ... --corpus FILE`.

Held-out safety: every text that also appears verbatim (whitespace collapsed) in a split the
harness scores on is dropped: STS-B dev (and test when present), SICK trial (and test when
present), the SciFact queries, the Banking77 texts and the MEN words. SICK train and its
trial/test splits share many sentences (SICK recombines the same sentences into pairs), so
SICK train loses some (930 texts are dropped in all from ../shared/eval). The SciFact
*documents* stay: they are the unlabelled side of the retrieval task (no query or relevance
judgement is used), as your own documents would be.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from zeroth.evaluation.tasks import (
    load_banking77,
    load_men,
    load_scifact,
    load_sick,
    load_stsb,
)


def normalise(text: str) -> str:
    """One line, single spaces: the form written out and compared."""
    return " ".join(text.split())


def _pairs(loader, path: Path) -> Iterator[str]:
    if path.is_file():
        s1, s2, _ = loader(path)
        yield from s1
        yield from s2


def training_texts(eval_dir: Path) -> Iterator[str]:
    yield from _pairs(load_stsb, eval_dir / "stsbenchmark" / "sts-train.csv")
    yield from _pairs(load_sick, eval_dir / "sick" / "SICK_train.txt")
    if (eval_dir / "scifact" / "queries.jsonl").is_file():
        yield from load_scifact(eval_dir / "scifact")[1]


def scored_texts(eval_dir: Path) -> Iterator[str]:
    """Texts of every split the harness scores (and of test splits, should they appear)."""
    for name in ("sts-dev.csv", "sts-test.csv"):
        yield from _pairs(load_stsb, eval_dir / "stsbenchmark" / name)
    for name in ("SICK_trial.txt", "SICK_test.txt", "SICK_test_annotated.txt"):
        yield from _pairs(load_sick, eval_dir / "sick" / name)
    yield from _pairs(load_men, eval_dir / "wordsim" / "MEN_dataset_lemma_form.dev")
    if (eval_dir / "scifact" / "queries.jsonl").is_file():
        yield from load_scifact(eval_dir / "scifact")[3]
    banking = eval_dir / "banking77" / "train.csv"
    if banking.is_file():
        yield from load_banking77(banking)[0]


def build_corpus(eval_dir: Path) -> tuple[list[str], int]:
    """(texts in first-seen order, how many were dropped as scored texts)."""
    held_out = {normalise(t) for t in scored_texts(eval_dir)}
    seen: set[str] = set()
    texts: list[str] = []
    dropped = 0
    for raw in training_texts(eval_dir):
        text = normalise(raw)
        if not text or text in seen:
            continue
        seen.add(text)
        if text in held_out:
            dropped += 1
            continue
        texts.append(text)
    return texts, dropped


def write_lines(path: Path, texts: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(text + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m zeroth.evaluation.corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="text file to write (one per line)")
    p.add_argument("--eval-dir", type=Path, default=Path("../shared/eval"))
    args = p.parse_args(argv)
    if not (args.eval_dir / "stsbenchmark" / "sts-train.csv").is_file():
        p.error(f"--eval-dir {args.eval_dir}: no stsbenchmark/sts-train.csv")
    texts, dropped = build_corpus(args.eval_dir)
    write_lines(args.out, texts)
    print(
        f"{args.out}: {len(texts)} texts ({dropped} dropped: they appear in a scored split)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
