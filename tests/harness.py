"""The evaluation harness as the import tests use it: the one place to repoint when it moves.

The data is ../shared/eval beside the repository (as in CI); ZEROTH_EVAL_DIR overrides it.
A missing eval dir fails the test that needs it rather than skipping it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from zeroth.evaluation.harness import evaluate, markdown_table
from zeroth.evaluation.tasks import DEFAULT_TASKS, load_stsb

Encode = Callable[[Sequence[str]], np.ndarray]
REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = Path(os.environ.get("ZEROTH_EVAL_DIR", REPO.parent / "shared" / "eval"))
# Every default task but Banking77: its cross-validated classifier costs a minute a row in CI,
# and vectors equal to 1e-4 (checked sentence by sentence) cannot move it; the README's full
# rows come from `python -m zeroth.evaluation`.
TASKS = tuple(t for t in DEFAULT_TASKS if t != "banking77")


def eval_dir() -> Path:
    if not (EVAL_DIR / "stsbenchmark" / "sts-dev.csv").is_file():
        raise FileNotFoundError(f"no evaluation data at {EVAL_DIR} (set ZEROTH_EVAL_DIR)")
    return EVAL_DIR


def stsb_dev_sentences() -> list[str]:
    """Every distinct sentence of STS-B dev, in file order."""
    s1, s2, _ = load_stsb(eval_dir() / "stsbenchmark" / "sts-dev.csv")
    return list(dict.fromkeys(s1 + s2))


def harness_row(encode: Encode) -> tuple[list[str], dict[str, dict]]:
    """The harness's table cells for one model (main metric per task, as printed) and every
    metric behind them."""
    results = evaluate(encode, TASKS, eval_dir(), progress=False)
    row = markdown_table([("model", results)], TASKS).splitlines()[2]
    return [cell.strip() for cell in row.strip("|").split("|")[1:]], results


def served_encoder(client, model: str, batch_size: int = 256, **request: object) -> Encode:
    """Vectors from /v1/embeddings of a Flask test client, as an OpenAI client gets them
    (base64); `request` adds fields such as dimensions."""

    def encode(texts: Sequence[str]) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            resp = client.post(
                "/v1/embeddings",
                json={"model": model, "input": batch, "encoding_format": "base64", **request},
            )
            if resp.status_code != 200:
                raise RuntimeError(f"{model}: {resp.status_code} {resp.get_json()}")
            rows = sorted(resp.get_json()["data"], key=lambda d: d["index"])
            parts += [np.frombuffer(base64.b64decode(r["embedding"]), "<f4") for r in rows]
        return np.stack(parts)

    return encode
