"""Online clustering: Sinkhorn-Knopp equipartition and SwAV's swapped prediction (Caron et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medssl.losses.optimal_transport import sinkhorn
from medssl.losses.precision import full_precision
from medssl.nn.distributed import all_reduce_max, all_reduce_sum


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft assignments ``Q [B, K]`` of a batch to K prototypes with equal prototype usage.

    Solves the entropy-regularised transport of SwAV: ``Q ∝ exp(scores / ε)`` rescaled alternately so
    each prototype receives 1/K of the *global* batch (summed over ranks) and each sample sends 1/B;
    rows of the result sum to 1. :func:`sinkhorn` in float64, with the batch split across ranks.
    """
    ones = torch.ones(len(scores), dtype=torch.float64, device=scores.device)
    batch = all_reduce_sum(ones.sum())
    usage = (batch / scores.shape[1]).expand(scores.shape[1])
    return sinkhorn(
        -scores.double(), ones, usage, epsilon, iterations, reduce_sum=all_reduce_sum, reduce_max=all_reduce_max
    ).float()


@full_precision
def swapped_prediction(
    scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor], temperature: float = 0.1
) -> torch.Tensor:
    """SwAV's swapped prediction over multi-crop: ``codes[i]`` is the Sinkhorn code of view ``i`` (the
    first ``len(codes)`` views, the global crops), predicted from every *other* view's scores::

        L = mean_i  mean_{v != i}  -Σ_k codes[i] · log softmax(scores[v] / τ)

    With two views this is ``-½ [q2·log p1 + q1·log p2]``."""
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(f"need ≥2 views and 1..{len(scores)} codes, got {len(scores)} views and {len(codes)} codes")
    log_p = [torch.log_softmax(s / temperature, dim=1) for s in scores]
    terms = []
    for i, q in enumerate(codes):
        others = [-(q * log_p[v]).sum(dim=1).mean() for v in range(len(scores)) if v != i]
        terms.append(torch.stack(others).mean())
    return torch.stack(terms).mean()


@torch.no_grad()
def spherical_kmeans(
    points: torch.Tensor, k: int, iterations: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the unit sphere (cosine similarity), as DeepCluster-v2 clusters its memory bank.
    Returns unit-norm centroids ``[k, d]`` and assignments ``[N]``; an empty cluster keeps its centroid."""
    points = torch.nn.functional.normalize(points.float(), dim=1)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    centroids = points[torch.randperm(len(points), generator=generator)[:k].to(points.device)].clone()
    for _ in range(iterations):
        assignments = (points @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, points)
        counts = torch.bincount(assignments, minlength=k)
        nonempty = counts > 0
        centroids[nonempty] = torch.nn.functional.normalize(sums[nonempty], dim=1)
    return centroids, (points @ centroids.T).argmax(dim=1)
