"""The default model (SmolLM2-135M) served by gunicorn from the README's minimal models list,
for the end-to-end tests that drive it with real clients and a real browser."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from zeroth.launch import GunicornServer

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "smollm2-135m"
GGUF = ROOT / ".cache" / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"
# The README's minimal list: nothing but `path:`, so token ids are read by `token_ids: auto`.
OPENAI_NAMES = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")
OTHER_NAME = "smollm2"


def ensure_default_model() -> Path:
    """The default checkpoint (CI builds it first, `make model`; a fresh checkout, here)."""
    if not (MODEL_DIR / "manifest.json").is_file():
        from extract.fetch import fetch_smollm2

        fetch_smollm2(ROOT / ".cache")
        subprocess.run(
            [sys.executable, "-m", "extract", str(GGUF), "--out", str(MODEL_DIR)],
            cwd=ROOT,
            check=True,
        )
    return MODEL_DIR


def tiktoken_cache() -> Path:
    """The tiktoken files, also for this process: LangChain tokenises with cl100k_base here."""
    from extract.fetch import fetch_tiktoken

    cache = fetch_tiktoken(ROOT / ".cache")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache


def minimal_models_list(folder: Path) -> Path:
    model = ensure_default_model()
    lines = ["models:"]
    lines += [f"  {name}:\n    path: {model}" for name in (*OPENAI_NAMES, OTHER_NAME)]
    lines.append(f"default: {OPENAI_NAMES[0]}")
    path = folder / "models_list.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(
    folder: Path, *, workers: int = 2, env: Mapping[str, str] | None = None
) -> GunicornServer:
    """gunicorn with the repository's gunicorn.conf.py over the minimal list, ready."""
    cache = tiktoken_cache()
    server = GunicornServer(
        minimal_models_list(folder),
        workers=workers,
        env={"TIKTOKEN_CACHE_DIR": str(cache), **(env or {})},
        log_path=folder / "gunicorn.log",
    )
    return server.start()


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
