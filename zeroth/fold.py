"""Fold every per-token step into one table, once, so serving is a single embedding_bag.

Each token's normalised vector depends on its id alone:
    t_i = rmsnorm(E_i * scale) * (offset + w)
Centring and removing common components are linear, so they commute with any weighted mean:
    P(sum_i a_i t_i / sum_i a_i - c) = sum_i a_i P(t_i - c) / sum_i a_i,   P = I - U^T U
and a per-token weight a_i folds into the row itself. So the folded table is
    T_i = a_i * P(t_i - c)
and a pooled vector is bag_sum(T) / bag_sum(a); with L2 normalisation the denominator cancels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def rms_normalise(
    embed: torch.Tensor, norm_weight: torch.Tensor, eps: float, scale: float, offset: float
) -> torch.Tensor:
    """Token rows after the family's embedding scale and RMSNorm, in fp32, as HF computes them."""
    x = embed.to(torch.float32)
    if scale != 1.0:
        # HF casts the scale to the activation dtype before multiplying; in fp32 it is exact.
        x = x * torch.tensor(scale, dtype=torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    w = norm_weight.to(torch.float32)
    return x * (offset + w) if offset else w * x


@dataclass
class FoldedTable:
    table: torch.Tensor  # [V, H] float32: a_i * P(t_i - c)
    weights: torch.Tensor | None  # [V] float32 a_i, None when unweighted


def project_out(x: torch.Tensor, center: torch.Tensor | None, components: torch.Tensor | None):
    """P(x - c) with P = I - U^T U for orthonormal rows U."""
    if center is not None:
        x = x - center.to(torch.float32)
    if components is not None and components.numel():
        u = components.to(torch.float32)
        x = x - (x @ u.T) @ u
    return x


def fold(
    normed: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
    components: torch.Tensor | None = None,
) -> FoldedTable:
    table = project_out(normed, center, components)
    weights = None
    if token_weights is not None:
        weights = token_weights.to(torch.float32)
        table = table * weights[:, None]
    return FoldedTable(table.contiguous(), weights)
