"""Peak RSS of extraction: Mistral-7B widths with 4 layers vs 1 layer (target ratio <= 1.3).

    .venv/bin/python bench/extract_memory.py [--layers 1 4] [--norm layer0 final] [--keep DIR]

Writes random bf16 safetensors shards with Mistral-7B's tensor names and widths (vocab 32000,
hidden 4096, intermediate 14336, 8 KV heads), one shard per layer, without ever building a
torch model, then runs `python -m extract` on each in a fresh process and reads that
process's own peak RSS (VmHWM). Extraction reads only what it keeps, so the extra layers
must not show up in memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 32000, 4096, 14336, 32, 8
KV = HIDDEN // HEADS * KV_HEADS
# Quality levers off: this measures extraction alone.
RAW = ["--weighting", "none", "--no-center", "--remove-components", "0", "--eval-dir", "/none"]
# VmHWM, not getrusage: Linux carries ru_maxrss over fork+exec, so a child would report this
# (model-writing) parent's peak; VmHWM belongs to the new process image alone.
CHILD = (
    "import re, sys\n"
    "from extract.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "print('MAXRSS_KB', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def layer_tensors(i: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = f"model.layers.{i}."
    shapes = {
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.k_proj.weight": (KV, HIDDEN),
        "self_attn.v_proj.weight": (KV, HIDDEN),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
        "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
    }
    return {p + k: rand(s, gen) for k, s in shapes.items()}


def rand(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)


def write_tokenizer(out: Path) -> None:
    words = [f"w{i}" for i in range(1000)]
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out)


def write_mistral(out: Path, n_layers: int) -> Path:
    """A Mistral-7B-shaped HF checkpoint with `n_layers` layers, one shard per layer."""
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(n_layers)
    weight_map = {}
    shards = [
        {"model.embed_tokens.weight": rand((VOCAB, HIDDEN), gen)},
        *(layer_tensors(i, gen) for i in range(n_layers)),
        {"model.norm.weight": rand((HIDDEN,), gen), "lm_head.weight": rand((VOCAB, HIDDEN), gen)},
    ]
    for n, tensors in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": n_layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(out)
    return out


def peak_rss_mb(source: Path, out: Path, norm: str) -> tuple[float, float]:
    start = time.perf_counter()
    args = [str(source), "--out", str(out), "--norm", norm, "-q", *RAW]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=REPO, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"extraction of {source} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MAXRSS_KB"))
    return int(line.split()[1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs=2, default=[1, 4], metavar=("FEW", "MANY"))
    parser.add_argument("--norm", nargs="+", default=["layer0", "final"])
    parser.add_argument("--keep", type=Path, help="build the models here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        root = Path(tmp)
        sources = {}
        for n in args.layers:
            start = time.perf_counter()
            sources[n] = write_mistral(root / f"mistral-{n}l", n)
            size = sum(f.stat().st_size for f in sources[n].iterdir()) / 1e9
            print(f"wrote {n}-layer model: {size:.2f} GB in {time.perf_counter() - start:.0f} s")
        print(f"{'norm':8} {'layers':>6} {'peak RSS MB':>12} {'time s':>7}")
        worst = 0.0
        for norm in args.norm:
            peaks = {}
            for n in args.layers:
                peaks[n], seconds = peak_rss_mb(sources[n], root / f"out-{norm}-{n}", norm)
                print(f"{norm:8} {n:>6} {peaks[n]:>12.1f} {seconds:>7.1f}")
            few, many = args.layers
            ratio = peaks[many] / peaks[few]
            worst = max(worst, ratio)
            print(f"{norm:8} ratio {many}/{few} layers: {ratio:.3f} (target <= 1.3)")
        print(f"worst ratio {worst:.3f}: {'OK' if worst <= 1.3 else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
