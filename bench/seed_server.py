"""Seed-style reference server: the straightforward way to serve a layer-0 slice.

A transformers `LlamaModel` with 0 layers (embed_tokens + final norm, the `[0, 0]` slice) loaded
from the checkpoint, a padded batch with an attention mask, masked mean, L2, `jsonify` of Python
lists, base64 through `struct`. Honest, not sabotaged: one torch thread per worker (fair on a
2-core machine), inference mode. It is the baseline for bench/side_by_side.py:

    SEED_MODEL_DIR=models/smollm2-135m-seed SEED_BASE64=struct|lists OMP_NUM_THREADS=1 \\
        gunicorn -w 2 -b 127.0.0.1:18110 --no-control-socket bench.seed_server:app
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import torch
from flask import Flask, jsonify, request
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaModel

torch.set_num_threads(1)

MODEL_DIR = Path(os.environ.get("SEED_MODEL_DIR", "models/smollm2-135m-seed"))
# lists: ignore encoding_format and always send float lists, as the issue describes the seed
# ("jsonify of lists") and as many seed servers do (the `openai` client accepts a list where it
# asked for base64): side_by_side's base64 baseline. struct: a stricter seed that encodes base64
# as asked (float32 bytes packed from the Python list), reported beside it.
BASE64_MODE = os.environ.get("SEED_BASE64", "struct")


def load_model(model_dir: Path) -> tuple[LlamaModel, AutoTokenizer]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    tensors = load_file(str(model_dir / "model.safetensors"))
    embed = tensors["embed_tokens"].float()
    config = LlamaConfig(
        vocab_size=embed.shape[0],
        hidden_size=embed.shape[1],
        num_hidden_layers=0,
        num_attention_heads=1,
        num_key_value_heads=1,
        intermediate_size=4 * embed.shape[1],
        rms_norm_eps=manifest["norm"]["eps"],
        pad_token_id=manifest["tokenizer"].get("pad_token_id"),
    )
    model = LlamaModel(config)
    model.load_state_dict({"embed_tokens.weight": embed, "norm.weight": tensors["norm"].float()})
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


model, tokenizer = load_model(MODEL_DIR)
app = Flask(__name__)


def error(message: str, status: int = 400):
    return jsonify({"error": {"message": message, "type": "invalid_request_error"}}), status


@app.get("/ready")
@app.get("/health")
def ready():
    return jsonify({"status": "ok"})


@app.post("/v1/embeddings")
def embeddings():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "input" not in body:
        return error("body must be a JSON object with 'input'")
    texts = body["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not texts or not all(isinstance(t, str) and t for t in texts):
        return error("'input' must be a non-empty string or list of non-empty strings")
    encoding_format = body.get("encoding_format", "float")

    batch = tokenizer(texts, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    with torch.inference_mode():
        hidden = model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
        vectors = torch.nn.functional.normalize(pooled, dim=-1).tolist()

    data = []
    for i, vec in enumerate(vectors):
        if encoding_format == "base64" and BASE64_MODE == "struct":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n_tokens = int(mask.sum())
    return jsonify(
        {
            "object": "list",
            "data": data,
            "model": body.get("model", "seed"),
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )
