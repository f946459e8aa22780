"""SimCLR (Chen et al., ICML 2020): two views of each image, a projection MLP, and NT-Xent over the
global batch (every other view is a negative)."""

from __future__ import annotations

import torch

from medssl.losses import info_nce
from medssl.methods.base import TwoViewMethod
from medssl.nn.heads import ProjectionHead


class SimCLR(TwoViewMethod):
    def __init__(
        self,
        backbone: dict | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
        decoupled: bool = False,
        **base,
    ):
        super().__init__(backbone=backbone, **base)
        self.save_hyperparameters()
        self.projector = ProjectionHead(self.encoder.out_dim, proj_hidden_dim, proj_dim, layers=2)

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return info_nce(z1, z2, self.hparams.temperature, decoupled=self.hparams.decoupled)
