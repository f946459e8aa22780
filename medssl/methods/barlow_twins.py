"""Barlow Twins (Zbontar et al., ICML 2021): two views through a wide projector whose cross-correlation
is pushed to the identity — invariance on the diagonal, redundancy reduction off it."""

from __future__ import annotations

import torch

from medssl.losses import barlow_twins
from medssl.methods.base import TwoViewMethod
from medssl.nn.heads import ProjectionHead


class BarlowTwins(TwoViewMethod):
    def __init__(
        self,
        backbone: dict | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        lambd: float = 5e-3,
        **base,
    ):
        super().__init__(backbone=backbone, **base)
        self.save_hyperparameters()
        self.projector = ProjectionHead(self.encoder.out_dim, proj_hidden_dim, proj_dim, layers=3)

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return barlow_twins(z1, z2, self.hparams.lambd)
