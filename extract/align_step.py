"""`--teacher`: the extraction step that replaces the table with one aligned to a teacher.

Interface used by the extraction CLI (extract/cli.py):
    add_arguments(parser)          --teacher, --align-lambda, --align-prior
    check(args, defaults)          refuses bad or conflicting options (UsageError, exit 2)
    apply(checkpoint, args, log)   swaps in the aligned [V, d] table, fills manifest.alignment

The aligned table is served as stored (manifest norm None) with mean pooling and L2, like any
imported table. SIF weights, centring and component removal are fitted to the source table's
geometry, not to the teacher's, so they are refused together with --teacher.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from extract import align, postprocess
from extract.errors import UsageError
from extract.teacher import cached_encode, is_teacher_dir, load_teacher, texts_hash
from zeroth import freq
from zeroth.checkpoint import EMBED, Checkpoint
from zeroth.manifest import AlignmentSpec, PostprocessSpec
from zeroth.tokenizer import load_tokenizer

DEFAULT_PRIOR = "table+tokens"
# Post-processing options that do not apply to an aligned table (compared with their defaults).
POSTPROCESS_OPTIONS = (
    "weighting",
    "sif_a",
    "freq",
    "stats_docs",
    "remove_components",
    "component_removal",
    "center",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "alignment (replaces the table with one fitted to a teacher on --corpus; see "
        "docs: costs minutes of teacher encoding, cached under --cache-dir/teacher)"
    )
    g.add_argument(
        "--teacher",
        type=Path,
        metavar="DIR",
        help="a sentence-transformers model folder (e.g. from python -m extract.fetch minilm); "
        "needs --corpus. The table becomes [vocab, teacher dims], served as stored",
    )
    g.add_argument(
        "--align-lambda",
        type=float,
        nargs="+",
        default=[align.DEFAULT_LAMBDA],
        metavar="L",
        help="pull towards the prior (larger = closer to it); several values: the best on "
        "STS-B dev in --eval-dir is kept and all scores recorded (default: %(default)s)",
    )
    g.add_argument(
        "--align-prior",
        choices=align.PRIORS,
        default=DEFAULT_PRIOR,
        help="the prior rows (what unused tokens keep): the table mapped by least squares, or "
        "the table beside the teacher's vector of each token string (encodes the whole "
        "vocabulary with the teacher: ~1 min per 50k tokens on 2 cores) (default: %(default)s)",
    )


def _flag(name: str, value: object) -> str:
    return f"--{'no-' if value is False else ''}{name.replace('_', '-')}"


def check(args: argparse.Namespace, defaults: Callable[[str], object]) -> None:
    """Refuse what cannot work before anything slow runs."""
    if args.teacher is None:
        given = [
            _flag(d, getattr(args, d))
            for d in ("align_lambda", "align_prior")
            if getattr(args, d) != defaults(d)
        ]
        if given:
            raise UsageError(f"{', '.join(given)} needs --teacher DIR")
        return
    teacher = Path(args.teacher).expanduser()
    if not teacher.is_dir():
        raise UsageError(f"--teacher {teacher}: no such directory")
    if not is_teacher_dir(teacher):
        raise UsageError(
            f"--teacher {teacher}: not a sentence-transformers folder (no modules.json)"
        )
    if not args.corpus:
        raise UsageError("--teacher needs --corpus FILE... (the texts the table is fitted on)")
    for name in args.corpus:
        if not Path(name).is_file():
            raise UsageError(f"--corpus: no such file: {name}")
    if any(lam <= 0 for lam in args.align_lambda):
        raise UsageError(f"--align-lambda must be > 0, got {args.align_lambda}")
    given = [
        _flag(d, getattr(args, d)) for d in POSTPROCESS_OPTIONS if getattr(args, d) != defaults(d)
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)}: not with --teacher (post-processing is fitted to the source "
            "table; the aligned table replaces it and is served as stored)"
        )
    eval_data = Path(args.eval_dir) / "stsbenchmark" / "sts-dev.csv"
    if len(args.align_lambda) > 1 and not eval_data.is_file():
        raise UsageError(f"several --align-lambda values need STS-B dev to choose: no {eval_data}")


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """Each id's text as the tokenizer decodes it alone (ids past the tokenizer: empty)."""
    n = min(vocab_size, tokenizer.get_vocab_size(with_added_tokens=True))
    texts = tokenizer.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    return [t.strip() for t in texts] + [""] * (vocab_size - n)


def aligned_checkpoint(ckpt: Checkpoint, table: np.ndarray) -> Checkpoint:
    """`ckpt` with `table` as its rows, served as stored (no norm, no post-processing).

    The source table's own tensors (norm weight, layer-0 statistics) go: they describe rows
    that are no longer stored, and a reader that checks them against the source model (the
    parity check of a layer-0 table) must not take the aligned rows for those."""
    source_table = ckpt.manifest.extraction.get("table", "embed_tokens")
    manifest = ckpt.manifest.model_copy(
        update={
            "extraction": {
                **ckpt.manifest.extraction,
                "table": f"aligned to a teacher (prior from: {source_table})",
            },
            "hidden_size": int(table.shape[1]),
            "norm": None,
            "embed_scale": 1.0,
            "postprocess": PostprocessSpec(),
            "quality": {},
        }
    )
    return Checkpoint(manifest, {EMBED: torch.from_numpy(table)}, ckpt.tokenizer_dir, ckpt.path)


def apply(
    ckpt: Checkpoint,
    args: argparse.Namespace,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> None:
    start = time.perf_counter()
    m = ckpt.manifest
    tokenizer = load_tokenizer(Path(ckpt.tokenizer_dir) / m.tokenizer.file)
    fields = [f for f in args.corpus_field.split(",") if f]
    texts: Sequence[str] = list(freq.iter_documents(args.corpus, fields))
    if not texts:
        raise UsageError("--corpus: no documents")
    bag, n_tokens = align.bag_of_tokens(
        tokenizer, texts, m.vocab_size, m.tokenizer.add_special_tokens, progress=progress
    )
    teacher = load_teacher(Path(args.teacher).expanduser(), progress=progress)
    log(f"teacher {teacher.name}: encoding {len(texts)} texts (cached under {args.cache_dir})")
    targets, hit = cached_encode(teacher, texts, Path(args.cache_dir))
    log(f"teacher vectors {list(targets.shape)} ({'cache hit' if hit else 'encoded, cached'})")

    features = ckpt.token_rows().numpy()
    if args.align_prior == "table+tokens":
        log(f"teacher: encoding {m.vocab_size} token strings for the prior")
        tokens, hit = cached_encode(
            teacher, token_strings(tokenizer, m.vocab_size), Path(args.cache_dir), kind="tokens"
        )
        log(f"token vectors {list(tokens.shape)} ({'cache hit' if hit else 'encoded, cached'})")
        features = np.concatenate([features, tokens], axis=1)
    x0 = align.prior(bag, features, targets)
    del features

    # Only the best table so far is kept: each is [V, d] (400 MB for Gemma's vocabulary).
    best: align.Fit | None = None
    best_score = float("-inf")
    scores: dict[str, float] = {}
    fit_seconds = 0.0
    for lam in args.align_lambda:
        result = align.fit(bag, targets, x0, lam, progress=progress)
        fit_seconds += result.seconds
        score = postprocess.stsb_dev_score(
            aligned_checkpoint(ckpt, result.table), args.eval_dir, tokenizer
        )
        if score is not None:
            scores[f"{lam:g}"] = score
        log(
            f"lambda {lam:g}: fit {result.seconds:.1f} s, CG iterations {result.cg_iterations}"
            + (f", STS-B dev {score}" if score is not None else "")
        )
        if best is None or (score is not None and score > best_score):
            best, best_score = result, score if score is not None else best_score
    assert best is not None  # argparse's nargs="+" gives at least one lambda

    aligned = aligned_checkpoint(ckpt, best.table)
    ckpt.manifest = aligned.manifest
    ckpt.tensors = aligned.tensors
    if scores:
        ckpt.manifest.quality[postprocess.QUALITY_KEY] = scores[f"{best.lam:g}"]
    ckpt.manifest.alignment = AlignmentSpec(
        teacher=str(args.teacher),
        teacher_sha256=teacher.sha256,
        corpus=[Path(f).name for f in args.corpus],
        corpus_sha256=texts_hash(texts),
        corpus_texts=len(texts),
        corpus_tokens=n_tokens,
        align_lambda=best.lam,
        prior=args.align_prior,
        dims=int(best.table.shape[1]),
        dead_dims=best.dead_dims,
        fit_seconds=round(fit_seconds, 2),
        stsb_dev_by_lambda=scores or None,
    )
    import sentence_transformers

    ckpt.manifest.tools["sentence-transformers"] = sentence_transformers.__version__
    log(
        f"aligned table {list(best.table.shape)}, lambda {best.lam:g}, prior {args.align_prior} "
        f"({time.perf_counter() - start:.1f} s)"
    )
