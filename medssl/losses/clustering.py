"""Online clustering: Sinkhorn-Knopp equipartition and SwAV's swapped prediction (Caron et al. 2020)."""

from __future__ import annotations

import torch

from medssl.nn.distributed import all_reduce_max, all_reduce_sum


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft assignments ``Q [B, K]`` of a batch to K prototypes with equal prototype usage.

    Solves the entropy-regularised transport of SwAV: ``Q ∝ exp(scores / ε)`` rescaled alternately so
    each prototype receives 1/K of the *global* batch (summed over ranks) and each sample sends 1/B;
    rows of the result sum to 1.
    """
    shift = all_reduce_max(scores.max().detach())  # one shift for the global batch, so it cancels
    q = torch.exp((scores - shift) / epsilon).T.double()  # [K, B]
    k, b_local = q.shape
    b = float(all_reduce_sum(torch.tensor(float(b_local), device=q.device)))
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T.float()


def swapped_prediction(scores1: torch.Tensor, scores2: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor,
                       temperature: float = 0.1) -> torch.Tensor:
    """Predict each view's code from the other view's scores:
    ``-½ mean[ Σ_k q2 log softmax(s1/τ) + Σ_k q1 log softmax(s2/τ) ]``."""
    log_p1 = torch.log_softmax(scores1 / temperature, dim=1)
    log_p2 = torch.log_softmax(scores2 / temperature, dim=1)
    return -0.5 * ((q2 * log_p1).sum(dim=1).mean() + (q1 * log_p2).sum(dim=1).mean())


@torch.no_grad()
def spherical_kmeans(points: torch.Tensor, k: int, iterations: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
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
