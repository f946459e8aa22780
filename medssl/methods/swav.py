"""SwAV (Caron et al., NeurIPS 2020): swap assignments between views. Each global crop's projection is
assigned to K learnable prototypes by Sinkhorn-Knopp under an equal-usage constraint (over the global
batch, plus a queue of past projections when batches are small); every other crop, global or local,
must predict that assignment from its own prototype scores."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from medssl.losses import sinkhorn_knopp, swapped_prediction
from medssl.methods.base import SSLMethod
from medssl.nn.heads import ProjectionHead, PrototypeHead
from medssl.nn.momentum import MomentumQueue


class SwAV(SSLMethod):
    """``n_prototypes`` K (3000 in the paper for ImageNet; fewer for small cohorts), ``temperature`` τ=0.1,
    Sinkhorn ``epsilon`` 0.05 with 3 ``sinkhorn_iterations``; prototypes are frozen for the first
    ``freeze_prototypes_steps`` optimiser steps (the paper's first epoch) and re-normalised every step.
    ``queue_length`` > 0 keeps that many past projections per global crop (per rank, 3840 in the paper for
    batch 256), used in the assignment once full, from epoch ``queue_start_epoch`` on."""

    def __init__(
        self,
        backbone: dict | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        n_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        n_global_crops: int = 2,
        freeze_prototypes_steps: int = 313,
        queue_length: int = 0,
        queue_start_epoch: int = 15,
        **base,
    ):
        super().__init__(backbone=backbone, **base)
        self.save_hyperparameters()
        self.projector = ProjectionHead(self.encoder.out_dim, proj_hidden_dim, proj_dim, layers=2)
        self.prototypes = PrototypeHead(proj_dim, n_prototypes)
        self.queues = (
            torch.nn.ModuleList(MomentumQueue(queue_length, proj_dim) for _ in range(n_global_crops))
            if queue_length > 0
            else None
        )

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self.prototypes.normalize_()

    def assign(self, crop: int, z: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes of a global crop's batch, prefixed by the queue's scores once it is full."""
        h = self.hparams
        # cast: torch's ModuleList is not generic, so indexing it says Module; this one holds MomentumQueues
        queue = (
            cast(MomentumQueue, self.queues[crop])
            if self.queues is not None and self.current_epoch >= h.queue_start_epoch
            else None
        )
        scores = scores.detach()
        if queue is not None and int(queue.filled) == h.queue_length:
            with torch.no_grad():
                scores = torch.cat([self.prototypes(queue.keys), scores])
        codes = sinkhorn_knopp(scores, h.epsilon, h.sinkhorn_iterations)[-len(z) :]
        if queue is not None:
            queue.push(z.detach(), gather_distributed=False)
        return codes

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        projections = [F.normalize(self.projector(f), dim=1) for f in self.embed_views(batch["views"])]
        scores = [self.prototypes(z) for z in projections]
        codes = [self.assign(i, projections[i], scores[i]) for i in range(h.n_global_crops)]
        loss = swapped_prediction(scores, codes, h.temperature)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_after_backward(self) -> None:
        if self.global_step < self.hparams.freeze_prototypes_steps:
            self.prototypes.prototypes.weight.grad = None
