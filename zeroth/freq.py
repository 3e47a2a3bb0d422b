"""Token frequencies for SIF weighting: from a word-frequency prior or from the user's documents.

Both sources end as one float64 count vector over the vocabulary, so memory stays [V] however
large the corpus is.

- prior: wordfreq's English list (top `n_words` words). Each word is tokenised with a leading
  space (its form inside running text) and every token it yields is credited with the word's
  frequency. Tokens the tokenizer adds to every input (BOS) are credited as occurring once per
  `PRIOR_WORDS_PER_TEXT` words, so they get a small weight rather than the maximum.
- corpus: every document is tokenised exactly as the server will tokenise it (same tokenizer,
  same special tokens) and token ids are counted.

p_i = count_i / sum(count). Tokens never seen get p = 0, hence the largest SIF weight a/(a+0) = 1:
unseen tokens are rare ones, and rare tokens carry the most information (no add-one smoothing,
which would hand ~V pseudo-counts to a small corpus and flatten every weight).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

PRIOR_WORDS_PER_TEXT = 20
DEFAULT_FIELDS = ("title", "text")


def _bincount(ids: Sequence[Sequence[int]], vocab_size: int, weights=None) -> np.ndarray:
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
    if weights is not None:
        weights = np.repeat(np.asarray(weights, np.float64), [len(r) for r in ids])
    # Ids past the table (a tokenizer larger than the embedding) cannot be served; drop them.
    keep = flat < vocab_size
    counts = np.bincount(
        flat[keep], weights=None if weights is None else weights[keep], minlength=vocab_size
    )
    return counts.astype(np.float64)


def added_special_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids the tokenizer adds around every input (e.g. Gemma's <bos>); none for SmolLM2."""
    with_special = tokenizer.encode("hello", add_special_tokens=True).ids
    plain = tokenizer.encode("hello", add_special_tokens=False).ids
    return [i for i in with_special if i not in plain]


def prior_counts(
    tokenizer: Tokenizer, vocab_size: int, lang: str = "en", n_words: int = 200_000
) -> np.ndarray:
    """Expected token counts of text whose words follow wordfreq's frequencies."""
    import wordfreq

    freqs = wordfreq.get_frequency_dict(lang)
    words = wordfreq.top_n_list(lang, n_words)
    weights = np.array([freqs[w] for w in words], dtype=np.float64)
    enc = tokenizer.encode_batch_fast([" " + w for w in words], add_special_tokens=False)
    counts = _bincount([e.ids for e in enc], vocab_size, weights)
    special = [i for i in added_special_ids(tokenizer) if i < vocab_size]
    if special:
        counts[special] += weights.sum() / PRIOR_WORDS_PER_TEXT
    return counts


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def is_jsonl(path: Path) -> bool:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return bool(suffixes) and suffixes[-1] in (".jsonl", ".ndjson")


def iter_documents(
    files: Iterable[str | Path], fields: Sequence[str] = DEFAULT_FIELDS
) -> Iterator[str]:
    """Documents from plain text (one per non-empty line) or JSONL (`fields` joined by a space).

    JSONL is recognised by a .jsonl/.ndjson suffix (optionally .gz). JSONL lines with none of the
    fields, or with invalid JSON, raise ValueError naming the file and line.
    """
    for name in files:
        path = Path(name)
        jsonl = is_jsonl(path)
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                if not jsonl:
                    yield line
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                parts = [str(obj[f]) for f in fields if isinstance(obj, dict) and obj.get(f)]
                if not parts:
                    if isinstance(obj, dict) and any(f in obj for f in fields):
                        continue  # fields present but empty: an empty document
                    raise ValueError(f"{path}:{lineno}: none of the fields {list(fields)}")
                yield " ".join(parts)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def corpus_counts(
    tokenizer: Tokenizer,
    vocab_size: int,
    files: Sequence[str | Path],
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    add_special_tokens: bool = True,
    batch_size: int = 1024,
    progress: bool = True,
) -> tuple[np.ndarray, int]:
    """Token counts over all documents, streamed in batches; returns (counts [V], n_documents)."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    n_docs = 0
    bar = tqdm(desc="counting tokens", unit=" docs", disable=not progress, unit_scale=True)
    with bar:
        for batch in batched(iter_documents(files, fields), batch_size):
            enc = tokenizer.encode_batch_fast(batch, add_special_tokens=add_special_tokens)
            counts += _bincount([e.ids for e in enc], vocab_size)
            n_docs += len(batch)
            bar.update(len(batch))
    return counts, n_docs


def probabilities(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    if total <= 0:
        raise ValueError("no tokens counted: the frequency source is empty")
    return counts / total


def sif_weights(p: np.ndarray, a: float) -> np.ndarray:
    """Smooth inverse frequency (Arora et al. 2017): a / (a + p)."""
    if a <= 0:
        raise ValueError(f"SIF a must be > 0, got {a}")
    return a / (a + p)


def usif_weights(p: np.ndarray, n: float) -> tuple[np.ndarray, float]:
    """Unsupervised SIF (Ethayarajh 2018): a / (0.5 a + p), with a derived from p and n.

    As the reference implementation (kawine/usif) defines it: the vocabulary V is the tokens
    the frequency source saw (p > 0), unseen tokens take the smallest seen p, n is the expected
    sentence length, alpha the share of V with p > 1 - (1 - 1/|V|)^n, Z = |V| / 2 and
    a = (1 - alpha) / (alpha Z). Returns (weights, a).
    """
    if n <= 0:
        raise ValueError(f"uSIF sentence length n must be > 0, got {n}")
    seen = p[p > 0]
    if seen.size == 0:
        raise ValueError("no tokens counted: the frequency source is empty")
    vocab = float(seen.size)
    threshold = 1 - (1 - 1 / vocab) ** n
    alpha = float((seen > threshold).sum()) / vocab
    if alpha == 0:
        raise ValueError(f"uSIF: no token is more frequent than 1 - (1 - 1/|V|)^n (n={n})")
    a = (1 - alpha) / (alpha * 0.5 * vocab)
    return a / (0.5 * a + np.where(p > 0, p, seen.min())), a
