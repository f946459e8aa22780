"""LVM-Med's graph-matching terms (Nguyen et al., NeurIPS 2023): the affinities two views' graphs are
matched by, and the Hamming loss of a matching against the identity.

Shapes: ``G`` graph pairs of ``n`` nodes; node embeddings ``[G, n, F]``; feature-map cells
``[G, n, P, D]`` with their centres in original-image coordinates ``[G, n, P, 2]``
(:mod:`medssl.geometry`); kNN edge lists ``[G, m, 2]`` (``-1`` rows pad). The solvers that turn
affinities into matchings, and I-MLE to train through them, live in :mod:`medssl.matching`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.geometry import nearest_cells


def global_affinity(zs: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """``c_glo[g, i, a] = cos(ẑ^s_i, ẑ^t_a)`` between the message-passed node embeddings ``[G, n, F]``."""
    return F.normalize(zs, dim=-1) @ F.normalize(zt, dim=-1).transpose(-1, -2)


def local_affinity(
    cells_s: torch.Tensor, cells_t: torch.Tensor, centres_s: torch.Tensor, centres_t: torch.Tensor, top: float = 0.5
) -> torch.Tensor:
    """``c_lo[g, i, a]`` from the feature-map cells ``[G, n, P, D]`` of view s of image i and view t of image a.

    Half is the location cost: cell p of i against the cell m(p) of a whose centre, mapped back to
    original-image coordinates (``centres [G, n, P, 2]``), is closest. Half is the feature cost: cell p
    against its most similar cell of a. Each averages only the best ``top`` fraction of cells."""
    similarity = torch.einsum("gipd,gaqd->giapq", F.normalize(cells_s, dim=-1), F.normalize(cells_t, dim=-1))
    closest, _ = nearest_cells(centres_s[:, :, None], centres_t[:, None])  # [G, n, n, P]
    location = similarity.gather(-1, closest.unsqueeze(-1)).squeeze(-1)
    feature = similarity.amax(-1)
    return 0.5 * (top_mean(location, top) + top_mean(feature, top))


def top_mean(values: torch.Tensor, top: float) -> torch.Tensor:
    k = max(1, round(top * values.shape[-1]))
    return values.topk(k, dim=-1).values.mean(-1)


def edge_affinity(zs: torch.Tensor, zt: torch.Tensor, edges_s: torch.Tensor, edges_t: torch.Tensor) -> torch.Tensor:
    """``c_e[g, (i,j), (a,b)] = cos(ẑ^s_i - ẑ^s_j, ẑ^t_a - ẑ^t_b)`` over the edge lists ``[G, m, 2]``
    (``-1`` rows are padding and get affinity 0)."""

    def differences(z: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        index = edges.clamp_min(0)
        tails = z.gather(1, index[..., :1].expand(-1, -1, z.shape[-1]))
        heads = z.gather(1, index[..., 1:].expand(-1, -1, z.shape[-1]))
        return F.normalize(tails - heads, dim=-1) * (edges[..., :1] >= 0)

    return differences(zs, edges_s) @ differences(zt, edges_t).transpose(1, 2)


def hamming(v: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Hamming distance ``Σ v(1 − t) + t(1 − v)`` between matchings, averaged over graphs; the target
    defaults to the identity (view ``i`` of one image matches view ``i`` of the other)."""
    if target is None:
        target = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device).expand_as(v)
    per_graph = (v * (1 - target) + target * (1 - v)).sum(dim=(-2, -1))
    return per_graph.mean()
