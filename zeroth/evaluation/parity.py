"""Parity check in the spirit of OVMS's compare_results.py: server vectors vs the full HF model.

The reference runs the *whole* source model (every layer, through transformers), hooks the norm
the checkpoint was cut from (for a layer-0 table: runs it on each token alone and takes layer 0's
hidden state, RMS-normalised, standardised with the per-dimension statistics the checkpoint
records: they come from every vocabulary row, which the reference does not recompute), and
applies the post-processing recorded in the manifest explicitly
(per-token weights, centring, component removal), then mean-pools and L2-normalises. The server
answers from its folded table with one embedding_bag. Agreement means extraction, folding and
serving together reproduce what the model itself computes.

    python -m zeroth.evaluation.parity --api_url http://127.0.0.1:8000/v1 \\
        --model text-embedding-3-small --checkpoint models/smollm2-135m

Exit status 1 when the minimum cosine is below --min-cosine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from zeroth.checkpoint import (
    CENTER,
    COMPONENTS,
    LAYER0_MEAN,
    LAYER0_STD,
    TOKEN_WEIGHTS,
    Checkpoint,
)
from zeroth.evaluation.harness import api_encoder
from zeroth.tokenizer import load_tokenizer

PROBES = [
    "A man is playing a guitar.",
    "The food was delicious and the waiter was friendly.",
    "Stocks fell sharply after the central bank raised interest rates.",
    "¿Dónde está la biblioteca?",
    "Transformers replaced recurrent networks for most NLP tasks in 2018-2020.",
    "ok",
    "The mitochondria is the powerhouse of the cell; ATP synthase spins like a turbine.",
    "日本語の文章も埋め込めます。",
]


def hooked_norm_outputs(model, norm_source: str, ids: list[int]) -> torch.Tensor:
    """Token vectors after the chosen RMSNorm, as the full model computes them, [T, H]."""
    captured: list[torch.Tensor] = []
    if norm_source == "layer0":
        module = model.model.layers[0].input_layernorm
        handle = module.register_forward_hook(lambda m, args, out: captured.append(out))
    else:
        # A [0, 0] slice feeds the (scaled) embeddings straight into the final norm.
        def grab(m, args, kwargs):
            captured.append(model.model.norm(args[0] if args else kwargs["hidden_states"]))

        handle = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return captured[0][0].to(torch.float32)


def is_layer0_table(ckpt: Checkpoint) -> bool:
    return ckpt.manifest.norm is None and str(ckpt.manifest.extraction.get("table", "")).startswith(
        "layer0"
    )


def layer0_alone(ckpt: Checkpoint, model, ids: list[int]) -> torch.Tensor:
    """Each token as its own one-token input: layer 0's hidden state, RMS-normalised without a
    weight (and standardised when the checkpoint was), [T, H]. hidden_states[1] is layer 0's
    output as long as a later layer exists (HF applies the final norm to the last entry only)."""
    if model.config.num_hidden_layers < 2:
        raise ValueError("the reference for a layer-0 table needs the full (multi-layer) model")
    eps = model.config.rms_norm_eps
    unique, inverse = torch.unique(torch.tensor(ids), return_inverse=True)
    with torch.no_grad():
        out = model(input_ids=unique[:, None], output_hidden_states=True, use_cache=False)
    x = out.hidden_states[1][:, 0].to(torch.float64)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    mean, std = ckpt.optional(LAYER0_MEAN), ckpt.optional(LAYER0_STD)
    if mean is not None and std is not None:
        x = (x - mean.double()) / std.double()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x[inverse].to(torch.float32)


def reference_vectors(ckpt: Checkpoint, model, token_ids: list[list[int]]) -> np.ndarray:
    weights = ckpt.optional(TOKEN_WEIGHTS)
    center = ckpt.optional(CENTER)
    components = ckpt.optional(COMPONENTS)
    layer0 = is_layer0_table(ckpt)
    out = []
    for ids in token_ids:
        if layer0:
            x = layer0_alone(ckpt, model, ids)
        else:
            x = hooked_norm_outputs(model, ckpt.manifest.norm.source, ids)
        a = torch.ones(len(ids)) if weights is None else weights.float()[torch.tensor(ids)]
        v = (a[:, None] * x).sum(0) / a.sum()
        if center is not None:
            v = v - center.float()
        if components is not None and components.numel():
            u = components.float()
            v = v - (u @ v) @ u
        out.append((v / v.norm().clamp_min(1e-12)).numpy())
    return np.stack(out)


def load_full_model(ckpt: Checkpoint, source: str | None, cache_dir: Path):
    from transformers import AutoModelForCausalLM

    from extract.source import resolve_source

    source = source or (ckpt.manifest.source.id if ckpt.manifest.source else None)
    if source is None:
        raise SystemExit("error: the manifest records no source; pass --source")
    resolved = resolve_source(source, cache_dir, log=lambda *a, **k: None)
    return AutoModelForCausalLM.from_pretrained(resolved.hf_dir, dtype=torch.float32).eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m zeroth.evaluation.parity", description=__doc__.split("\n")[0]
    )
    p.add_argument("--api_url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="text-embedding-3-small", help="the alias to ask for")
    p.add_argument("--api_key", default="none")
    p.add_argument("--checkpoint", type=Path, required=True, help="the alias's checkpoint dir")
    p.add_argument("--source", help="the full model (default: the manifest's source)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    p.add_argument("--inputs", type=Path, help="a text file, one input per line")
    p.add_argument("--min-cosine", type=float, default=0.9999)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)

    texts = PROBES
    if args.inputs:
        texts = [t for t in args.inputs.read_text().splitlines() if t.strip()]
    ckpt = Checkpoint.from_pretrained(args.checkpoint)
    if ckpt.manifest.norm is None and not is_layer0_table(ckpt):
        p.error(f"{args.checkpoint}: its table is served as stored (no LLM norm to compare with)")
    tokenizer = load_tokenizer(args.checkpoint / ckpt.manifest.tokenizer.file)
    add_special = ckpt.manifest.tokenizer.add_special_tokens
    token_ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=add_special)]

    served = api_encoder(args.api_url, args.model, args.api_key, progress=False)(texts)
    expected = reference_vectors(
        ckpt, load_full_model(ckpt, args.source, args.cache_dir), token_ids
    )
    cosine = (served * expected).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1)
    )
    result = {
        "inputs": len(texts),
        "min_cosine": float(cosine.min()),
        "max_abs_diff": float(np.abs(served - expected).max()),
        "norm": ckpt.manifest.norm.source if ckpt.manifest.norm else "layer0 table",
        "postprocess": ckpt.manifest.postprocess.model_dump(),
        "ok": bool(cosine.min() >= args.min_cosine),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.model} @ {args.api_url} vs the full {ckpt.manifest.architecture}, "
            + (f"{result['norm']} norm" if ckpt.manifest.norm else "layer 0 on each token alone")
        )
        print(
            f"inputs {result['inputs']}  min cosine {result['min_cosine']:.7f}  "
            f"max |diff| {result['max_abs_diff']:.2e}  {'OK' if result['ok'] else 'MISMATCH'}"
        )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
