"""Align a static table to a sentence-embedding teacher on a corpus (`--teacher`).

With B the [N, V] bag of tokens of the corpus (row = token counts / length, what mean pooling
computes) and Y the teacher's [N, d] unit vectors of the same texts, the aligned table solves

    min_X ||B X - Y||^2 + lambda ||X - X0||^2

where the prior X0 = F P maps the source table into the teacher's space: F is the table T as
the server would use it (`table`), or T beside the teacher's vector of each token's string
(`table+tokens`), and P is the least-squares map from B F to Y. Tokens the corpus never uses
keep their prior row; the prior is what carries the LLM's knowledge to them.

The normal equations (B^T B + lambda I) X = B^T Y + lambda X0 are solved with scipy's conjugate
gradients, one block of output columns at a time, Jacobi-preconditioned, warm-started at X0,
over the rows of tokens the corpus uses (the others' equations say X = X0). B^T B is never
formed (a document of L tokens would add L^2 entries), only products with B and B^T.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg
from tokenizers import Tokenizer
from tqdm.auto import tqdm

PRIORS = ("table", "table+tokens")
DEFAULT_LAMBDA = 0.1
# Output columns per CG solve: large enough for sparse x dense products to pay, small enough
# that one block's work vectors stay a few hundred MB on a 262k-row vocabulary.
COLUMN_BLOCK = 64
CG_RTOL = 1e-4
CG_MAXITER = 200
# Teacher output dimensions whose corpus vectors never exceed this are treated as dead.
DEAD_DIM = 1e-6


def bag_of_tokens(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    vocab_size: int,
    add_special_tokens: bool = True,
    batch_size: int = 1024,
    progress: bool = True,
) -> tuple[sp.csr_matrix, int]:
    """([N, V] CSR with row = counts / length over the ids the table can serve, as mean
    pooling weighs them; the number of tokens counted)."""
    indptr = [0]
    n_tokens = 0
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    bar = tqdm(total=len(texts), desc="tokenising corpus", unit=" docs", disable=not progress)
    with bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            for enc in tokenizer.encode_batch_fast(batch, add_special_tokens=add_special_tokens):
                ids = np.asarray(enc.ids, dtype=np.int64)
                ids = ids[ids < vocab_size]
                n_tokens += len(ids)
                uniq, counts = np.unique(ids, return_counts=True)
                indices.append(uniq)
                data.append(counts.astype(np.float32) / max(len(ids), 1))
                indptr.append(indptr[-1] + len(uniq))
            bar.update(len(batch))
    matrix = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.asarray(indptr)),
        shape=(len(texts), vocab_size),
    )
    return matrix, n_tokens


def least_squares_map(features: np.ndarray, targets: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """P minimising ||features P - targets||^2 (a tiny ridge keeps a rank-deficient F solvable).

    Measured on SmolLM2 (STS-B dev after the fit): with 800 corpus texts, fewer than P has
    rows, a ridge of 0.01-0.1 x the mean diagonal gains ~10 points; with 19.6k texts it costs
    0.3-1.5. Corpora that small are not what alignment is for, so the ridge stays tiny."""
    f = features.astype(np.float64)
    gram = f.T @ f
    gram[np.diag_indices_from(gram)] += ridge * max(np.trace(gram) / len(gram), 1e-12)
    return np.linalg.solve(gram, f.T @ targets.astype(np.float64)).astype(np.float32)


def prior(bag: sp.csr_matrix, features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """X0 = F P, with P fitted on the pooled features B F."""
    pooled = np.asarray(bag @ features)
    return features @ least_squares_map(pooled, targets)


def solve_block(
    b: sp.csr_matrix,
    bt: sp.csr_matrix,
    gram_diagonal: np.ndarray,
    lam: float,
    rhs: np.ndarray,
    warm: np.ndarray,
    rtol: float,
    maxiter: int,
) -> tuple[np.ndarray, int]:
    """(B^T B + lam I) X = rhs for a [n, k] block, as one CG on the stacked columns.

    The columns share the operator, so stacking them is one SPD system whose products are
    sparse x dense blocks (fast) instead of k sparse x vector ones (k times the overhead).
    Token frequencies span orders of magnitude, and so does the diagonal of B^T B: a Jacobi
    preconditioner takes most of that spread out (several times fewer iterations).
    `gram_diagonal` is the diagonal of B^T B, the same for every block."""
    n, k = rhs.shape
    inverse = (1.0 / (gram_diagonal + lam)).astype(rhs.dtype)[:, None]

    def matvec(v: np.ndarray) -> np.ndarray:
        x = v.reshape(n, k)
        return (bt @ (b @ x) + lam * x).ravel()

    def jacobi(v: np.ndarray) -> np.ndarray:
        return (v.reshape(n, k) * inverse).ravel()

    steps = 0

    def count(_: np.ndarray) -> None:
        nonlocal steps
        steps += 1

    size = (n * k, n * k)
    op = LinearOperator(size, matvec=matvec, dtype=rhs.dtype)
    pre = LinearOperator(size, matvec=jacobi, dtype=rhs.dtype)
    solution, _ = cg(
        op, rhs.ravel(), x0=warm.ravel(), rtol=rtol, maxiter=maxiter, M=pre, callback=count
    )
    return solution.reshape(n, k), steps


@dataclass
class Fit:
    table: np.ndarray  # [V, d] float32
    lam: float
    seconds: float
    dead_dims: list[int] = field(default_factory=list)
    cg_iterations: list[int] = field(default_factory=list)


def fit(
    bag: sp.csr_matrix,
    targets: np.ndarray,
    x0: np.ndarray,
    lam: float,
    block: int = COLUMN_BLOCK,
    rtol: float = CG_RTOL,
    maxiter: int = CG_MAXITER,
    progress: bool = True,
) -> Fit:
    """argmin ||B X - Y||^2 + lam ||X - X0||^2; rows of tokens absent from B stay X0."""
    if lam <= 0:
        raise ValueError(f"lambda must be > 0, got {lam}")
    start = time.perf_counter()
    used = np.flatnonzero(np.asarray(bag.getnnz(axis=0)) > 0)
    b = bag[:, used].tocsr()
    bt = b.T.tocsr()
    gram_diagonal = np.asarray(b.multiply(b).sum(axis=0)).ravel()
    dim = targets.shape[1]
    table = np.array(x0, dtype=np.float32, copy=True)
    # A column the teacher never uses has Y = 0; its prior column is then 0 as well, and CG
    # on a zero right-hand side only divides by zero.
    dead = np.flatnonzero(np.abs(targets).max(axis=0) <= DEAD_DIM)
    live = np.setdiff1d(np.arange(dim), dead)
    table[:, dead] = 0.0
    x0_used = x0[used]
    iterations: list[int] = []
    blocks = [live[i : i + block] for i in range(0, len(live), block)]
    bar = tqdm(blocks, desc=f"fitting (lambda {lam:g})", unit=" blocks", disable=not progress)
    for cols in bar:
        warm = x0_used[:, cols].astype(np.float32)
        rhs = bt @ targets[:, cols].astype(np.float32) + lam * warm
        solution, steps = solve_block(b, bt, gram_diagonal, lam, rhs, warm, rtol, maxiter)
        table[np.ix_(used, cols)] = solution.astype(np.float32)
        iterations.append(steps)
    return Fit(table, lam, round(time.perf_counter() - start, 2), dead.tolist(), iterations)
