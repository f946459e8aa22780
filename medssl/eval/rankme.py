"""RankMe (Garrido et al., ICML 2023): the effective rank of an embedding matrix, a label-free
predictor of downstream performance (higher is better; ≈1 means collapse)."""

from __future__ import annotations

import torch


def rankme(embeddings: torch.Tensor, epsilon: float = 1e-7) -> float:
    """``exp(-Σ p_k log p_k)`` with ``p_k = σ_k / ‖σ‖₁ + ε`` over the singular values of ``[N, K]``
    embeddings (no centring, as in the paper; use N ≫ K, e.g. 25,600 samples)."""
    sigma = torch.linalg.svdvals(embeddings.detach().double())
    p = sigma / sigma.sum() + epsilon
    return float(torch.exp(-(p * torch.log(p)).sum()))
