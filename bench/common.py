"""Shared pieces of the benchmark scripts: datasets, latency statistics, the seed server's command.

Servers are started, waited for and stopped with zeroth.launch, as the tests do."""

from __future__ import annotations

import csv
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EVAL_DIR = REPO.parent / "shared" / "eval"
# The benchmarks' model (`make smollm2`), not the served default (models/wordllama): its
# tokenizer has a tiktoken twin. The seed server (bench/seed_server.py) needs the seed's own
# [0, 0] slice (embedding table + final norm; `make bench` builds it): a table of the same size
# and tokenizer, where our default build serves the layer-0 table.
SMOLLM2_DIR = REPO / "models" / "smollm2-135m"
SMOLLM2_SEED_DIR = REPO / "models" / "smollm2-135m-seed"
RESULTS_DIR = REPO / "bench" / "results"

# Common English words, so synthetic texts tokenise to roughly one token per word.
_WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which this be "
    "or has had first one their its new after but who not they have her she two been other when "
    "there all during into school time may years more most only over city some world would "
    "where later up such used many can state about national out known university united then "
    "made system three while people part since year high group game team house water light "
    "small river long music family work number life day under film back south north early day "
    "said what each make like him into time look two more write go see way could people than "
    "first water been call who oil its now find long down day did get come made may part"
).split()


def sts_sentences(eval_dir: str | Path = DEFAULT_EVAL_DIR) -> list[str]:
    """Both sentences of every STS-B dev pair (tab-separated, columns 6 and 7), in file order."""
    path = Path(eval_dir) / "stsbenchmark" / "sts-dev.csv"
    out: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                out.extend(s for s in (row[5], row[6]) if s.strip())
    if not out:
        raise ValueError(f"{path}: no sentence pairs found")
    return out


def synthetic_texts(length: int, count: int = 1000, seed: int = 0) -> list[str]:
    """`count` random texts of `length` common words (about `length` tokens each)."""
    if length < 1:
        raise ValueError("synthetic length must be >= 1")
    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=length)) for _ in range(count)]


def file_texts(path: str | Path) -> list[str]:
    """One text per non-empty line."""
    with open(path, encoding="utf-8") as f:
        out = [line.rstrip("\n") for line in f if line.strip()]
    if not out:
        raise ValueError(f"{path}: no non-empty lines")
    return out


def load_dataset(
    name: str, eval_dir: str | Path = DEFAULT_EVAL_DIR, synthetic_length: int = 64
) -> list[str]:
    if name == "sts":
        return sts_sentences(eval_dir)
    if name == "synthetic":
        return synthetic_texts(synthetic_length)
    return file_texts(name)


def batches(texts: Sequence[str], batch_size: int, count: int | None = None) -> list[list[str]]:
    """Consecutive batches cycling through `texts`; by default one pass (at least one batch)."""
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    if count is None:
        count = max(1, len(texts) // batch_size)
    n = len(texts)
    return [[texts[(i * batch_size + j) % n] for j in range(batch_size)] for i in range(count)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class LatencyStats:
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        s = sorted(values)
        if not s:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(sum(s) / len(s), percentile(s, 50), percentile(s, 90), percentile(s, 99), s[-1])


def parse_cpus(value: str | None) -> set[int] | None:
    """'0,1' or '0-3' -> a CPU set for sched_setaffinity; None/'' -> no pinning."""
    if not value:
        return None
    cpus: set[int] = set()
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def write_models_list(path: Path, alias: str, model_dir: Path) -> Path:
    """A one-model list for our server (the schema of models_list.yaml)."""
    path.write_text(f"models:\n  {alias}:\n    path: {model_dir}\ndefault: {alias}\n")
    return path


def seed_command(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "--no-control-socket",
        "--timeout",
        "120",
        "bench.seed_server:app",
    ]
