"""Heads that SSL methods put on an encoder: MLP projectors and prototype layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``layers`` linear layers with BatchNorm and ReLU between them (SimCLR/Barlow Twins projectors);
    ``last_bn`` adds an affine-free BatchNorm at the output, as Barlow Twins and MoCo v3 do;
    ``batch_norm=False`` leaves the hidden BatchNorms out (MoCo v2's and PiCO/INS's heads)."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        layers: int = 2,
        last_bn: bool = False,
        batch_norm: bool = True,
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            blocks += [nn.Linear(dim, hidden_dim, bias=not batch_norm), *norm, nn.ReLU(inplace=True)]
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            blocks.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PrototypeHead(nn.Module):
    """Cosine scores against ``n_prototypes`` unit vectors (SwAV, DeepCluster-v2, INS class prototypes).
    Call :meth:`normalize_` after each optimiser step to keep prototypes on the sphere."""

    def __init__(self, dim: int, n_prototypes: int):
        super().__init__()
        self.prototypes = nn.Linear(dim, n_prototypes, bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(x, dim=1))
