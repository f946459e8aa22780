"""Redundancy reduction: Barlow Twins (Zbontar et al. 2021)."""

from __future__ import annotations

import torch

from medssl.losses.precision import full_precision
from medssl.nn.distributed import gather


@full_precision
def barlow_twins(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, gather_distributed: bool = True, eps: float = 1e-5
) -> torch.Tensor:
    """``Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²`` with ``C`` the cross-correlation of the two views'
    embeddings, each standardised over the *global* batch as the paper's BatchNorm (biased variance,
    no affine) does. Every rank computes the same global loss, which with gathering and DDP's gradient
    averaging gives exactly the single-process gradient (no 1/world_size slip)."""
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    c = z1.T @ z2 / n
    diagonal = torch.diagonal(c)
    return (1 - diagonal).pow(2).sum() + lambd * (c.pow(2).sum() - diagonal.pow(2).sum())
