"""Graphs over a batch of embeddings: kNN adjacency and graph convolution (Kipf & Welling 2017), the
message passing LVM-Med runs on each view's graph before matching."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def knn_adjacency(z: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetric 0/1 adjacency ``[..., n, n]`` joining each node to its ``k`` most cosine-similar others
    (no self-loops). Edges are a discrete choice: no gradient flows through them."""
    z = F.normalize(z.float(), dim=-1)
    similarity = z @ z.transpose(-1, -2)
    n = z.shape[-2]
    similarity.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    neighbours = similarity.topk(min(k, n - 1), dim=-1).indices
    adjacency = torch.zeros_like(similarity).scatter_(-1, neighbours, 1.0)
    return torch.maximum(adjacency, adjacency.transpose(-1, -2))


def edge_list(adjacency: torch.Tensor) -> torch.Tensor:
    """Directed edges ``[m, 2]`` (both directions) of one 0/1 adjacency ``[n, n]``."""
    return adjacency.nonzero()


def normalized_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 (A + I) D^-1/2``, the renormalised propagation matrix of a GCN."""
    a = adjacency + torch.eye(adjacency.shape[-1], device=adjacency.device, dtype=adjacency.dtype)
    d = a.sum(-1).rsqrt()
    return d.unsqueeze(-1) * a * d.unsqueeze(-2)


class GCN(nn.Module):
    """``layers`` graph convolutions ``H ← σ(Â H W)`` of width ``dim``; ReLU between layers, none after
    the last, so node features can keep the sign structure cosine affinities need.

    ``residual`` adds each layer's input back (``H ← H + σ(Â H W)``, when widths agree). Without it, on
    small dense graphs (16 nodes, k = 5: each node averages about 7) two layers smooth the nodes of a
    graph towards each other, and a matching of two such graphs can no longer tell them apart."""

    def __init__(self, in_dim: int, dim: int = 128, layers: int = 2, residual: bool = True):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(in_dim if i == 0 else dim, dim) for i in range(layers))
        self.residual = residual

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        propagate = normalized_adjacency(adjacency).to(h.dtype)
        for i, linear in enumerate(self.linears):
            update = propagate @ linear(h)
            if i < len(self.linears) - 1:
                update = F.relu(update)
            h = h + update if self.residual and update.shape == h.shape else update
        return h
