"""The README's quality table: every post-processing option, alone and combined, on every task.

Start from seed checkpoints (extracted with no post-processing), e.g.
    python -m extract .cache/weights/SmolLM2-135M-Instruct.Q4_1.gguf --out models/q-smol-seed \\
        --weighting none --no-center --remove-components 0
then
    python -m zeroth.evaluation.quality_table --base SmolLM2-135M=models/q-smol-seed \\
        --base "Gemma 3 270M=models/q-gemma3-seed" --markdown quality.md --json quality.json

Each variant runs extract.postprocess.apply with the listed extraction flags on a copy of the
base (exactly what `python -m extract ... FLAGS` does after slicing), then scores it in memory.
The `corpus` variant uses the STS-B *train* sentences (unlabelled) as --corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from extract import postprocess
from zeroth.checkpoint import Checkpoint
from zeroth.evaluation.harness import evaluate, markdown_table
from zeroth.evaluation.tasks import DEFAULT_TASKS, TASKS, load_stsb

SEED = ["--weighting", "none", "--no-center", "--remove-components", "0"]
K = str(postprocess.DEFAULT_COMPONENTS)
# name -> (description for the table, extraction flags); "{corpus}" is the STS-B train file.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "seed": ("plain mean, no post-processing", SEED),
    "sif": (
        "SIF weights only (prior)",
        ["--weighting", "sif", "--no-center", "--remove-components", "0"],
    ),
    "center": (
        "centring only (prior)",
        ["--weighting", "none", "--center", "--remove-components", "0"],
    ),
    "components": (
        f"remove {K} components only (prior)",
        ["--weighting", "none", "--no-center", "--remove-components", K],
    ),
    "sif+center": ("SIF + centring (prior)", ["--remove-components", "0"]),
    "default": ("**default** (SIF prior + centre + components)", []),
    "k2": ("default flags, 2 components", ["--remove-components", "2"]),
    "k8": ("default flags, 8 components", ["--remove-components", "8"]),
    "usif": (
        "uSIF (prior): its weights + 5 components removed piecewise, no centring",
        [
            "--weighting",
            "usif",
            "--component-removal",
            "piecewise",
            "--remove-components",
            "5",
            "--no-center",
        ],
    ),
    "corpus": ("default flags + `--corpus` STS-B train sentences", ["--corpus", "{corpus}"]),
}


def stsb_train_corpus(eval_dir: Path, out: Path) -> Path:
    s1, s2, _ = load_stsb(eval_dir / "stsbenchmark" / "sts-train.csv")
    out.write_text("\n".join(dict.fromkeys(s1 + s2)) + "\n")
    return out


def base_table(base: Checkpoint) -> str | None:
    """The LLM table a base holds (embed or layer0), None for an imported model."""
    if str(base.manifest.extraction.get("table", "")).startswith("layer0"):
        return "layer0"
    return "embed" if base.manifest.norm is not None else None


def variant_encoder(base: Checkpoint, flags: list[str], eval_dir: Path):
    from zeroth.model import StaticEmbedder, folded_table
    from zeroth.pooling import TorchPooler
    from zeroth.tokenizer import TextTokenizer

    parser = argparse.ArgumentParser()
    postprocess.add_arguments(parser)
    args = parser.parse_args(flags + ["--eval-dir", str(eval_dir)])
    ckpt = Checkpoint(base.manifest.model_copy(deep=True), dict(base.tensors), base.tokenizer_dir)
    start = time.perf_counter()
    postprocess.apply(ckpt, args)
    seconds = time.perf_counter() - start
    text = TextTokenizer.from_file(
        Path(ckpt.tokenizer_dir) / ckpt.manifest.tokenizer.file,
        ckpt.manifest.tokenizer.add_special_tokens,
    )
    model = StaticEmbedder(ckpt.manifest, text, TorchPooler(folded_table(ckpt)), Path("."))

    def encode(texts: Sequence[str]):
        return model.encode(texts)

    return encode, seconds


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m zeroth.evaluation.quality_table", description=__doc__
    )
    p.add_argument("--base", action="append", required=True, metavar="LABEL=DIR")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(DEFAULT_TASKS))
    p.add_argument("--eval-dir", type=Path, default=Path("../shared/eval"))
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = []
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = stsb_train_corpus(args.eval_dir, Path(tmp) / "stsb-train-sentences.txt")
        for spec in args.base:
            label, _, directory = spec.partition("=")
            base = Checkpoint.from_pretrained(directory)
            table = base_table(base)
            if table is None:
                p.error(f"{directory}: the table is served as stored; the variants need an LLM")
            norm = base.manifest.norm.source if base.manifest.norm else None
            kind = f"{norm} norm" if norm else f"{table} table"
            for name in args.variants:
                title, flags = VARIANTS[name]
                flags = [f.replace("{corpus}", str(corpus)) for f in flags]
                encode, seconds = variant_encoder(base, flags, args.eval_dir)
                results = evaluate(encode, args.tasks, args.eval_dir, progress=False)
                row_label = f"{label} ({kind}): {title}"
                rows.append((row_label, results))
                records.append(
                    {
                        "base": label,
                        "table": table,
                        "norm": norm,
                        "variant": name,
                        "flags": flags,
                        "postprocess_seconds": round(seconds, 1),
                        "tasks": results,
                    }
                )
                print(markdown_table(rows[-1:], args.tasks).splitlines()[-1], flush=True)
    table = markdown_table(rows, args.tasks)
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
