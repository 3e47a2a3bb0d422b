"""Training-free quality levers folded into the table (SIF weighting, centring, components).

Interface used by the extraction CLI (extract/cli.py):
    add_arguments(parser)            adds --weighting, --sif-a, --freq, --corpus, ... to the CLI
    apply(checkpoint, args) -> None  adds token_weights / center / components tensors to
                                     checkpoint.tensors and fills checkpoint.manifest.postprocess
                                     (and manifest.quality when eval data is present)

What is computed (t_i = the RMS-normalised row of token i, zeroth.fold):
  token_weights  a_i = a / (a + p_i), p from zeroth.freq (prior or corpus counts); uSIF:
                 a_i = a / (0.5 a + p_i) with a derived from p (zeroth.freq.usif_weights)
  center         c = the mean pooled vector of the frequency source
  components     U = its top-K principal directions (orthonormal rows), of the centred pooled
                 vectors when centring is on, of the raw ones otherwise (as in SIF);
                 piecewise (uSIF): row i scaled by sqrt(lambda_i), lambda_i = s_i^2 / sum s_j^2
                 over the K kept, so x - (x U^T) U = x - sum lambda_i (x . u_i) u_i
The server folds them into T_i = a_i * P(t_i - c); since P and the centring are linear, the
served vector P(sum a_i t_i / sum a_i - c) is exactly "weighted mean, centre, remove U".

"Pooled vectors of the frequency source":
  --corpus  the documents themselves, pooled with the new weights in a second streamed pass
            (running sum and [H, H] second moment only; at most --stats-docs documents).
  prior     no sentences exist, so we use the sentence model behind SIF: tokens drawn
            independently from p. A pooled vector then centres on sum q_i t_i with
            q_i ∝ p_i a_i, and its covariance is the q-weighted covariance of the rows.
            (Measured on STS-B train: this beats p-weighted table statistics once K >= 2.)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zeroth import freq
from zeroth.checkpoint import CENTER, COMPONENTS, TOKEN_WEIGHTS, Checkpoint
from zeroth.fold import fold
from zeroth.manifest import Manifest, PostprocessSpec
from zeroth.tokenizer import TextTokenizer, load_tokenizer

# Defaults chosen on STS-B *train* (dev is what we report); see the README quality table.
DEFAULT_WEIGHTING = "sif"
DEFAULT_SIF_A = 1e-3
DEFAULT_COMPONENTS = 4
DEFAULT_STATS_DOCS = 200_000
# uSIF's expected sentence length when no documents are counted: the reference code's value
# for STS (kawine/usif); with --corpus it is the corpus's mean tokens per document.
USIF_PRIOR_N = 11
PRIOR_WORDS = 200_000
QUALITY_KEY = "stsb_dev_spearman"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("quality (folded into the table; free at serving time)")
    g.add_argument(
        "--weighting",
        choices=["none", "sif", "usif"],
        default=DEFAULT_WEIGHTING,
        help="token weights for the mean: sif = a/(a+p(token)); usif = a/(0.5a+p(token)) with "
        "a derived from the frequencies (Ethayarajh 2018; --sif-a unused) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--sif-a",
        type=float,
        default=DEFAULT_SIF_A,
        metavar="A",
        help="SIF smoothing a; smaller = stronger down-weighting of frequent tokens "
        "(default: %(default)g)",
    )
    g.add_argument(
        "--freq",
        choices=["prior", "corpus"],
        default=None,
        help="token-frequency source: prior = wordfreq English word list; corpus = --corpus "
        "files (default: corpus when --corpus is given, else prior)",
    )
    g.add_argument(
        "--corpus",
        nargs="+",
        metavar="FILE",
        default=None,
        help="your unlabelled documents: plain text (one per line) or .jsonl/.ndjson "
        "(optionally .gz); streamed, only a [vocab] count vector is kept",
    )
    g.add_argument(
        "--corpus-field",
        default=",".join(freq.DEFAULT_FIELDS),
        metavar="FIELDS",
        help="JSONL fields joined into a document, comma-separated (default: %(default)s; "
        "missing fields are skipped)",
    )
    g.add_argument(
        "--stats-docs",
        type=int,
        default=DEFAULT_STATS_DOCS,
        metavar="N",
        help="corpus documents used for the centre/components pass (default: %(default)s)",
    )
    g.add_argument(
        "--remove-components",
        type=int,
        default=DEFAULT_COMPONENTS,
        metavar="K",
        help="remove the top-K principal directions of pooled vectors (default: %(default)s)",
    )
    g.add_argument(
        "--component-removal",
        choices=["full", "piecewise"],
        default="full",
        help="full: remove each of the K directions entirely; piecewise: remove direction i "
        "in proportion s_i^2 / sum_j s_j^2 of its variance among the K, as uSIF does "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--center",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="subtract the mean pooled vector (default: on)",
    )
    g.add_argument(
        "--eval-dir",
        default="../shared/eval",
        metavar="DIR",
        help="STS-B dev scored at extraction into manifest.quality when present "
        "(default: %(default)s; skipped silently when absent)",
    )


def _check(args: argparse.Namespace) -> None:
    if args.sif_a <= 0:
        raise ValueError(f"--sif-a must be > 0, got {args.sif_a}")
    if args.remove_components < 0:
        raise ValueError(f"--remove-components must be >= 0, got {args.remove_components}")
    if args.freq == "corpus" and not args.corpus:
        raise ValueError("--freq corpus needs --corpus FILE...")
    for name in args.corpus or ():
        if not Path(name).is_file():
            raise ValueError(f"--corpus: no such file: {name}")


def _source(args: argparse.Namespace) -> str:
    return args.freq or ("corpus" if args.corpus else "prior")


def _tokenizer(ckpt: Checkpoint):
    return load_tokenizer(Path(ckpt.tokenizer_dir) / ckpt.manifest.tokenizer.file)


def _normed(ckpt: Checkpoint) -> torch.Tensor:
    return ckpt.token_rows()


def top_components(second_moment: torch.Tensor, k: int, piecewise: bool = False) -> torch.Tensor:
    """Top-k eigenvectors of a symmetric [H, H] matrix as rows, largest first: orthonormal, or
    with piecewise each scaled by sqrt(its eigenvalue's share of the k eigenvalues)."""
    values, vectors = torch.linalg.eigh(second_moment.double())
    rows = vectors[:, -k:].flip(1).T
    if piecewise:
        top = values[-k:].flip(0).clamp_min(0)
        rows = rows * (top / top.sum()).sqrt()[:, None]
    return rows.contiguous().float()


def table_statistics(
    normed: torch.Tensor, q: np.ndarray, center: bool, k: int, piecewise: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Mean and top-k directions of token rows drawn with probabilities q (prior source)."""
    q_t = torch.from_numpy(q)
    rows = torch.nonzero(q_t > 0).squeeze(1)
    x = normed[rows].double()
    w = q_t[rows] / q_t[rows].sum()
    mean = w @ x
    if center:
        x = x - mean
    moment = (x * w[:, None]).T @ x
    components = top_components(moment, k, piecewise) if k else None
    return (mean.float() if center else None), components


def pooled_statistics(
    normed: torch.Tensor,
    weights: torch.Tensor | None,
    manifest: Manifest,
    text: TextTokenizer,
    files: Sequence[str],
    fields: Sequence[str],
    center: bool,
    k: int,
    max_docs: int,
    batch_size: int = 1024,
    progress: bool = True,
    piecewise: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Mean and top-k directions of the documents' pooled vectors, streamed (sum + [H, H])."""
    from itertools import islice

    from tqdm.auto import tqdm

    from zeroth.model import StaticEmbedder
    from zeroth.pooling import TorchPooler

    pooler = TorchPooler(fold(normed, weights))
    embedder = StaticEmbedder(manifest, text, pooler, Path("."))
    dim = normed.shape[1]
    total = torch.zeros(dim, dtype=torch.float64)
    moment = torch.zeros(dim, dim, dtype=torch.float64)
    n = 0
    docs = islice(freq.iter_documents(files, fields), max_docs)
    with tqdm(desc="pooling documents", unit=" docs", disable=not progress) as bar:
        for batch in freq.batched(docs, batch_size):
            ids = [[i for i in row if i < normed.shape[0]] for row in embedder.tokenize(batch)]
            ids = [row for row in ids if row]
            if not ids:
                continue
            v = torch.from_numpy(embedder.embed_ids(ids, normalize=False)).double()
            total += v.sum(0)
            moment += v.T @ v
            n += len(ids)
            bar.update(len(batch))
    if n == 0:
        raise ValueError("--corpus: no documents to pool")
    mean = total / n
    moment = moment / n
    if center:
        moment = moment - torch.outer(mean, mean)
    components = top_components(moment, k, piecewise) if k else None
    return (mean.float() if center else None), components


def compute(
    ckpt: Checkpoint, args: argparse.Namespace, tokenizer=None, progress: bool = True
) -> tuple[dict[str, torch.Tensor], PostprocessSpec]:
    """The tensors and manifest record for `args`; nothing is written to the checkpoint."""
    _check(args)
    m = ckpt.manifest
    k = args.remove_components
    if k > m.hidden_size:
        raise ValueError(f"--remove-components {k} exceeds the hidden size {m.hidden_size}")
    sif = args.weighting in ("sif", "usif")
    piecewise = args.component_removal == "piecewise"
    if not sif and not args.center and k == 0:
        return {}, PostprocessSpec()

    tokenizer = tokenizer or _tokenizer(ckpt)
    source = _source(args)
    fields = [f for f in args.corpus_field.split(",") if f]
    if source == "corpus":
        counts, n_docs = freq.corpus_counts(
            tokenizer,
            m.vocab_size,
            args.corpus,
            fields=fields,
            add_special_tokens=m.tokenizer.add_special_tokens,
            progress=progress,
        )
        freq_source = "corpus:" + ",".join(Path(f).name for f in args.corpus) + f" ({n_docs} docs)"
    else:
        counts = freq.prior_counts(tokenizer, m.vocab_size, n_words=PRIOR_WORDS)
        freq_source = f"prior:wordfreq-en-top{PRIOR_WORDS}"
    p = freq.probabilities(counts)
    usif_a = usif_n = None

    tensors: dict[str, torch.Tensor] = {}
    weights = None
    if args.weighting == "usif":
        usif_n = round(counts.sum() / n_docs, 2) if source == "corpus" else USIF_PRIOR_N
        w, usif_a = freq.usif_weights(p, usif_n)
        weights = torch.from_numpy(w).float()
        tensors[TOKEN_WEIGHTS] = weights
    elif sif:
        weights = torch.from_numpy(freq.sif_weights(p, args.sif_a)).float()
        tensors[TOKEN_WEIGHTS] = weights
    if args.center or k:
        normed = _normed(ckpt)
        if source == "corpus":
            center, components = pooled_statistics(
                normed,
                weights,
                m,
                TextTokenizer(
                    tokenizer,
                    Path(ckpt.tokenizer_dir) / m.tokenizer.file,
                    m.tokenizer.add_special_tokens,
                ),
                args.corpus,
                fields,
                args.center,
                k,
                args.stats_docs,
                progress=progress,
                piecewise=piecewise,
            )
        else:
            q = p * (weights.double().numpy() if sif else 1.0)
            center, components = table_statistics(normed, q, args.center, k, piecewise)
        if center is not None:
            tensors[CENTER] = center
        if components is not None:
            tensors[COMPONENTS] = components
    spec = PostprocessSpec(
        weighting=args.weighting,
        sif_a=args.sif_a if args.weighting == "sif" else None,
        usif_a=usif_a,
        usif_n=usif_n,
        freq_source=freq_source,
        center=args.center,
        remove_components=k,
        component_removal="piecewise" if k and piecewise else None,
    )
    return tensors, spec


def subtable_encoder(ckpt: Checkpoint, tokenizer):
    """encode(texts) for a checkpoint, folding only the rows the texts use.

    The same computation as the served table (zeroth.model.folded_table), restricted to a few
    thousand rows, so scoring at extraction time does not pay for folding a 262k-row table.
    """
    from zeroth.pooling import TorchPooler, l2_normalise

    m = ckpt.manifest
    weights = ckpt.optional(TOKEN_WEIGHTS)

    def encode(texts: Sequence[str]) -> np.ndarray:
        enc = tokenizer.encode_batch_fast(
            list(texts), add_special_tokens=m.tokenizer.add_special_tokens
        )
        lengths = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
        flat = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in enc])
        used = np.unique(flat)
        rows = torch.from_numpy(used)
        sub = fold(
            ckpt.token_rows(rows),
            None if weights is None else weights[rows],
            ckpt.optional(CENTER),
            ckpt.optional(COMPONENTS),
        )
        offsets = np.zeros(len(enc), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        return l2_normalise(TorchPooler(sub).pool(np.searchsorted(used, flat), offsets))

    return encode


def stsb_dev_score(ckpt: Checkpoint, eval_dir: str | Path, tokenizer=None) -> float | None:
    """Spearman×100 on STS-B dev, or None when the data is absent."""
    from zeroth.evaluation.tasks import load_stsb, pair_scores

    path = Path(eval_dir) / "stsbenchmark" / "sts-dev.csv"
    if not path.is_file():
        return None
    encode = subtable_encoder(ckpt, tokenizer or _tokenizer(ckpt))
    return round(pair_scores(encode, *load_stsb(path))["spearman"], 2)


def apply(checkpoint: Checkpoint, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    tokenizer = _tokenizer(checkpoint)
    tensors, spec = compute(checkpoint, args, tokenizer)
    for name in (TOKEN_WEIGHTS, CENTER, COMPONENTS):
        checkpoint.tensors.pop(name, None)
    checkpoint.tensors.update(tensors)
    checkpoint.manifest.postprocess = spec
    score = stsb_dev_score(checkpoint, getattr(args, "eval_dir", "../shared/eval"), tokenizer)
    if score is not None:
        checkpoint.manifest.quality[QUALITY_KEY] = score
    print(
        f"postprocess: {spec.model_dump(exclude_none=True)} ({time.perf_counter() - start:.1f} s)"
    )
