"""python -m extract SOURCE --out models/NAME: a causal LM in, a static embedding checkpoint out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from extract import align_step, postprocess
from extract.errors import ExtractError, UsageError

if TYPE_CHECKING:
    from zeroth.checkpoint import Checkpoint

DESCRIPTION = """\
Turn a causal LLM (Llama, Mistral, Qwen2, Gemma 1-3) into a small static-embedding checkpoint:
model.safetensors, the tokenizer and manifest.json. mergekit slices the model with a template
in configs/ (one per slice). By default (--table layer0) decoder layer 0 is run once on each
vocabulary token alone and its outputs become the table; with --table embed only embed_tokens
and the chosen RMSNorm weight are read back and kept.

A model2vec, sentence-transformers StaticEmbedding or WordLlama folder is imported instead: its
table is kept as stored, with the library's tokenizer settings, so the server answers with the
library's own vectors (detected from the folder's files; the LLM-only options are refused)."""

EPILOG = """\
examples:
  python -m extract .cache/weights/SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m \\
      --alias text-embedding-3-small
  python -m extract .cache/weights/gemma-3-270m-q4_k_m.gguf --out models/gemma3-270m --dtype float16
  python -m extract path/to/hf-checkpoint --out models/mine --table embed --norm layer0
  python -m extract HuggingFaceTB/SmolLM2-135M --out models/smol   # hub id (needs network)
  python -m extract.fetch wordllama && python -m extract .cache/weights/wordllama --out models/wl
  python -m extract path/to/model2vec-model --out models/m2v --alias m2v
  python -m zeroth.evaluation.corpus --out corpus.txt && python -m extract.fetch minilm
  python -m extract .cache/weights/SmolLM2-135M-Instruct.Q4_1.gguf --out models/smol-aligned \\
      --teacher .cache/weights/all-MiniLM-L6-v2 --corpus corpus.txt

exit status: 0 ok, 1 extraction failed, 2 bad arguments or output exists."""


class Stages:
    """One line per long step on stderr, with the time the previous step took."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.start
            print(f"[extract {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    from zeroth.families import FAMILIES

    parser = argparse.ArgumentParser(
        prog="python -m extract",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a local Hugging Face checkpoint directory, a .gguf file (converted once with "
        "transformers' GGUF loader, cached by sha256), a hub model id (downloads), or a "
        "model2vec / sentence-transformers StaticEmbedding / WordLlama folder (imported)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="checkpoint directory to write (models/NAME)"
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it already exists")
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        help="model family; default: detected from config.json (architectures, model_type)",
    )
    parser.add_argument(
        "--table",
        choices=["layer0", "embed"],
        default=None,
        help="the served table: layer0 = decoder layer 0 run on each vocabulary token alone "
        "(a [0, 1] slice; RMS-normalised without a weight), embed = embed_tokens with the "
        "RMSNorm --norm picks. Default: layer0, or embed when --norm is given",
    )
    parser.add_argument(
        "--standardise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--table layer0 only: standardise each dimension of the layer-0 rows over the "
        "vocabulary, then RMS-normalise again (tames layer 0's few massive dimensions). "
        "Default: on",
    )
    parser.add_argument(
        "--norm",
        choices=["final", "layer0"],
        default=None,
        help="--table embed only (refused with --table layer0): which RMSNorm weight to keep, "
        "the final model.norm (what a [0, 0] slice keeps) or layer 0's input_layernorm "
        "(a [0, 1] slice). Default: final",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="storage dtype of the embedding table (the norm is always float32). Default: float32",
    )
    parser.add_argument(
        "--add-special-tokens",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whether serving adds the tokenizer's special tokens (e.g. Gemma's <bos>), as the "
        "source model sees them. Default: yes",
    )
    parser.add_argument(
        "--revision", help="hub revision (branch, tag or commit) when SOURCE is a hub id"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache"),
        help="where converted GGUF models (hf/<sha256 prefix>) and --teacher vectors "
        "(teacher/) are cached. Default: .cache",
    )
    ov = parser.add_argument_group("OpenVINO")
    ov.add_argument(
        "--openvino",
        action="store_true",
        help="also write an OpenVINO IR of the pooling graph to OUT/openvino/model.xml",
    )
    ov.add_argument(
        "--ov-weights",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="IR weight precision (int8: per-row symmetric). Default: fp32",
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="map this OpenAI model name (e.g. text-embedding-3-small) to the new checkpoint in "
        "--models-list; repeatable",
    )
    serving.add_argument(
        "--models-list",
        type=Path,
        default=Path("models_list.yaml"),
        help="the alias file --alias edits (created if absent). Default: ./models_list.yaml",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show mergekit's and transformers' logs"
    )
    postprocess.add_arguments(parser)
    align_step.add_arguments(parser)
    return parser


def extract(args: argparse.Namespace) -> Path:
    """The whole pipeline; returns the checkpoint directory."""
    from extract.import_static import alias_settings, check_options, detect
    from extract.write import check_output, publish, staging_dir

    log = Stages(args.quiet)
    out: Path = args.out
    check_output(out, args.force)
    if args.ov_weights != "fp32" and not args.openvino:
        raise UsageError("--ov-weights needs --openvino")
    library = detect(Path(args.source).expanduser())
    if library is not None:
        check_options(args, build_parser().get_default, library)
    else:
        table_and_norm(args)  # before converting or slicing anything
    align_step.check(args, build_parser().get_default)
    if args.alias:
        from extract.aliases import check_models_list

        check_models_list(args.models_list)

    settings: dict[str, object] = {}
    with staging_dir(out) as staging:
        if library is None:
            ckpt = extract_llm(args, staging, log)
        else:
            ckpt = import_library_model(args, library, staging, log)
            settings = alias_settings(ckpt.manifest.imported)
        built = staging / "checkpoint"
        ckpt.save_pretrained(built)
        if args.openvino:
            from extract.openvino_export import export_openvino
            from extract.write import tool_versions

            log(f"exporting OpenVINO IR ({args.ov_weights})")
            spec = export_openvino(built, args.ov_weights)
            ckpt.manifest.openvino = spec
            ckpt.manifest.tools.update(tool_versions(("openvino",)))
            ckpt.manifest.write(built)
            log(
                f"OpenVINO vs torch: max abs diff {spec.max_abs_diff:.2e}, "
                f"min cosine {spec.min_cosine:.6f}"
            )
        publish(built, out, staging, args.force)
    if args.alias:
        from extract.aliases import add_aliases

        add_aliases(args.models_list, out, args.alias, settings)
        extra = "".join(f", {key}: {value}" for key, value in settings.items())
        log(f"{args.models_list}: {', '.join(args.alias)} -> {out}{extra}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote {out} ({size / 1e6:.1f} MB)")
    return out


def extract_llm(args: argparse.Namespace, staging: Path, log: Stages) -> Checkpoint:
    """A causal LM's table and norm, sliced by mergekit, post-processed: the checkpoint."""
    from extract.mergekit_run import (
        SLICE_TEMPLATES,
        render_config,
        run_mergekit,
        source_dtype,
        template_path,
    )
    from extract.prune import read_embed_and_norm
    from extract.source import resolve_source
    from extract.write import build_checkpoint, stage_tokenizer
    from zeroth.families import UnknownFamilyError, detect_family, get_family

    if not args.verbose:
        import transformers

        transformers.logging.set_verbosity_error()
        if args.quiet:
            transformers.logging.disable_progress_bar()

    source = resolve_source(args.source, args.cache_dir, args.revision, log)
    try:
        family = get_family(args.family) if args.family else detect_family(source.config)
    except UnknownFamilyError as exc:
        raise ExtractError(str(exc)) from None
    table, norm = table_and_norm(args)
    template = SLICE_TEMPLATES["layer0" if table == "layer0" else norm]
    merge_dtype = source_dtype(source.config)
    merge_config = render_config(template, source.hf_dir, merge_dtype)
    layers = merge_config["slices"][0]["sources"][0]["layer_range"][1]

    merged = staging / "mergekit"
    log(f"mergekit: {family.name}, {template} template, layer_range [0, {layers}]")
    run_mergekit(merge_config, merged, verbose=args.verbose, quiet=args.quiet)
    if table == "layer0":
        from extract.layer0_table import layer0_table
        from extract.write import norm_eps

        log("running layer 0 on each vocabulary token alone")
        standardised = args.standardise is not False
        embed, stats = layer0_table(
            merged, norm_eps(source.config), standardised, progress=not args.quiet
        )
        norm_weight = None
    else:
        embed, norm_weight = read_embed_and_norm(merged, norm, family.tensors)
        standardised, stats = False, {}
    tokenizer_src = merged if (merged / "tokenizer.json").is_file() else source.hf_dir
    if not (tokenizer_src / "tokenizer.json").is_file():
        raise ExtractError(f"{source.hf_dir}: no tokenizer.json (a fast tokenizer is needed)")
    tokenizer_dir = stage_tokenizer(tokenizer_src, staging / "tokenizer")
    log(f"kept {table} table {list(embed.shape)}" + (f" and the {norm} norm" if norm else ""))
    ckpt = build_checkpoint(
        family=family,
        config=source.config,
        embed=embed,
        norm_weight=norm_weight,
        norm_source=norm,
        dtype=args.dtype,
        tokenizer_dir=tokenizer_dir,
        add_special_tokens=args.add_special_tokens,
        source=source.spec,
        extraction={
            "method": "mergekit passthrough",
            "template": str(template_path(template).name),
            "layer_range": [0, layers],
            "mergekit_dtype": merge_dtype,
            "table": TABLE_RECORDS[table, standardised],
            "norm": norm,
            "dtype": args.dtype,
            "family": "given" if args.family else "detected",
        },
    )
    ckpt.tensors.update(stats)
    try:
        if args.teacher is not None:
            align_step.apply(ckpt, args, log, progress=not args.quiet)
        else:
            postprocess.apply(ckpt, args)
    except (ValueError, OSError) as exc:  # its checks on the quality options, corpus files
        raise UsageError(str(exc).splitlines()[0]) from exc
    return ckpt


# manifest.extraction["table"]: what the stored rows are (zeroth.evaluation.parity reads it).
TABLE_RECORDS = {
    ("layer0", True): "layer0 output, RMS-normalised, standardised per dimension",
    ("layer0", False): "layer0 output, RMS-normalised",
    ("embed", False): "embed_tokens",
}


def table_and_norm(args: argparse.Namespace) -> tuple[str, str | None]:
    """--table and --norm resolved: a layer-0 table has no norm weight to choose."""
    if args.table == "layer0" and args.norm is not None:
        raise UsageError("--norm applies to --table embed only (the layer-0 table has no norm)")
    table = args.table or ("embed" if args.norm else "layer0")
    if table == "embed" and args.standardise is not None:
        raise UsageError("--standardise applies to --table layer0 only")
    return table, (args.norm or "final") if table == "embed" else None


def import_library_model(
    args: argparse.Namespace, library: str, staging: Path, log: Stages
) -> Checkpoint:
    """A model2vec / sentence-transformers / WordLlama model, served as trained."""
    from extract.import_static import READERS, build_checkpoint

    model = READERS[library](Path(args.source).expanduser())
    spec = model.spec
    log(
        f"{library} model: table {list(model.table.shape)}, mean pooling, "
        f"{'unit' if spec.normalize else 'unnormalised'} vectors"
        + (f", first {spec.max_tokens} tokens" if spec.max_tokens else ", no token limit")
        + (f", Matryoshka dims {spec.matryoshka_dims}" if spec.matryoshka_dims else "")
    )
    ckpt = build_checkpoint(model, args.dtype, staging)
    score = postprocess.stsb_dev_score(ckpt, args.eval_dir)
    if score is not None:
        ckpt.manifest.quality[postprocess.QUALITY_KEY] = score
        log(f"STS-B dev Spearman {score}")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        extract(args)
    except ExtractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
