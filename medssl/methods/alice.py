"""Alice (Jiang et al., ICCV 2023): masked self-distillation between crops that show the same anatomy.

Two views (crops whose anatomy corresponds, from :mod:`medssl.data.correspondence`) go through a student
that sees them block-masked and an EMA teacher that sees them clean; both are a 3D encoder-decoder read
at three depths (:class:`~medssl.nn.dense_backbones.SwinEncoder`) with an iBOT-style head
(:class:`~medssl.nn.heads.TokenDistillationHead`).

- **L_cls**: DINO across views on the global outputs (the teacher's view ``q`` teaches the student's
  view ``v ≠ q``), centred and sharpened teacher, its temperature warmed up.
- **L_patch**: within each view, the student's encoder tokens attend (CASA,
  :class:`~medssl.nn.cross_attention.CrossAttentionAlignment`) to the student's and to the teacher's
  decoder tokens; the teacher-aligned tokens teach the student-aligned ones (DINO per token).
- **L_rec**: the student reconstructs the clean input; MSE on the masked voxels (``reconstruction:
  all`` averages over every voxel, as the released code).

``L = λ_cls·L_cls + λ_patch·L_patch + λ_rec·L_rec``, λ = (1, 1, 10).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from medssl.losses import DINOLoss
from medssl.losses.masked_prediction import masked_embedding_mse
from medssl.losses.masking import axial_block_mask
from medssl.methods.base import MedsslModule
from medssl.methods.schedules import cosine_schedule, set_weight_decay
from medssl.nn.backbones import build_encoder
from medssl.nn.cross_attention import CrossAttentionAlignment
from medssl.nn.dense_backbones import SwinEncoder
from medssl.nn.heads import TokenDistillationHead
from medssl.nn.momentum import ema_update


class Alice(MedsslModule):
    """``backbone``: the :func:`~medssl.nn.backbones.build_encoder` arguments of a ``swin_unetr`` (the
    name may be left out). Head: ``out_dim`` / ``patch_out_dim`` (512),
    ``head_hidden_dim``, ``bottleneck_dim``; CASA ``casa_heads``. Masking: ``mask_ratio`` of
    ``mask_block``² axial blocks. Temperatures: student ``student_temperature``; teacher from
    ``warmup_teacher_temperature`` to ``teacher_temperature`` over ``warmup_teacher_epochs``. Teacher
    momentum on a cosine from ``momentum`` to 1; weight decay on a cosine from ``weight_decay`` to
    ``weight_decay_end``; last layers frozen for ``freeze_last_layer_epochs``."""

    def __init__(
        self,
        backbone: dict | None = None,
        out_dim: int = 512,
        patch_out_dim: int = 512,
        head_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        casa_heads: int = 8,
        mask_ratio: float = 0.75,
        mask_block: int = 16,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.01,
        warmup_teacher_temperature: float = 0.008,
        warmup_teacher_epochs: int = 30,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        weights: tuple[float, float, float] = (1.0, 1.0, 10.0),
        reconstruction: Literal["masked", "all"] = "masked",
        freeze_last_layer_epochs: int = 1,
        optimizer: str = "adamw",
        lr: float = 5e-4,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        warmup_epochs: float = 10.0,
        min_lr: float = 1e-6,
        lr_scaling: Literal["none", "linear"] = "none",
    ):
        super().__init__()
        self.save_hyperparameters()
        config = {"name": "swin_unetr", "spatial_dims": 3, "in_channels": 1, **(backbone or {})}
        student = build_encoder(**config)
        if not isinstance(student, SwinEncoder):
            raise ValueError(f"Alice needs a dense encoder-decoder: backbone name 'swin_unetr', got {config['name']!r}")
        self.student: SwinEncoder = student
        self.head = TokenDistillationHead(
            self.student.encoder_dim,
            self.student.decoder_dim,
            None,
            out_dim,
            patch_out_dim,
            head_hidden_dim,
            bottleneck_dim,
        )
        self.casa = CrossAttentionAlignment(patch_out_dim, heads=casa_heads)
        self.teacher: SwinEncoder = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.cls_loss = DINOLoss(out_dim, student_temperature, center_momentum)
        self.patch_loss = DINOLoss(patch_out_dim, student_temperature, center_momentum)

    def encoders(self) -> dict[str, nn.Module]:
        """``encoder``: the teacher's SwinUNETR (the EMA, as DINO exports), ``student`` the student's;
        either loads into the 3D segmentation task and ``medssl embed --dense``."""
        return {"encoder": self.teacher, "student": self.student}

    # -- monitors --------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_features: list[torch.Tensor] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The teacher's decoder tokens of whole (centre-cropped) volumes: RankMe of the dense features."""
        tokens = self.teacher.dense(self.scale(batch["image"]))["decoder_tokens"]
        self._val_features.append(tokens.flatten(0, 1).detach().float().cpu())

    def on_validation_epoch_end(self) -> None:
        from medssl.eval import rankme

        features = torch.cat(self._val_features) if self._val_features else torch.zeros(0)
        if len(features) >= 2:
            self.log("val/rankme", rankme(features), sync_dist=True)

    # -- schedules ------------------------------------------------------------------------------------
    def teacher_temperature(self) -> float:
        h = self.hparams
        if self.current_epoch >= h.warmup_teacher_epochs:
            return h.teacher_temperature
        share = self.current_epoch / max(1, h.warmup_teacher_epochs)
        return h.warmup_teacher_temperature + share * (h.teacher_temperature - h.warmup_teacher_temperature)

    def _progress(self) -> tuple[int, int]:
        trainer = self._trainer
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1
        return self.global_step, max(1, total)

    # -- training -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        views = [self.scale(v) for v in batch["views"][:2]]
        masks = [axial_block_mask(len(v), v.shape[2:], h.mask_block, h.mask_ratio).to(v.device) for v in views]
        student = [self.student.dense(v * ~m[:, None]) for v, m in zip(views, masks)]
        with torch.no_grad():
            teacher = [self.teacher.dense(v) for v in views]
        s_heads = [self.head(o["global"], o["encoder_tokens"], o["decoder_tokens"]) for o in student]
        with torch.no_grad():
            t_heads = [self.teacher_head(o["global"], o["encoder_tokens"], o["decoder_tokens"]) for o in teacher]
        tau = self.teacher_temperature()
        l_cls = self.cls_loss(
            torch.cat([s[0] for s in s_heads]),
            torch.cat([t[0] for t in t_heads]),
            n_teacher_views=2,
            teacher_temperature=tau,
        )
        patch_terms = []
        for s, t in zip(s_heads, t_heads):
            aligned_student = self.casa(s[1], s[2])
            aligned_teacher = self.casa(s[1], t[2])  # queries from the student in both, as the paper
            patch_terms.append(self.patch_loss.same_view(aligned_student, aligned_teacher, tau))
        l_patch = torch.stack(patch_terms).mean()
        l_rec = torch.stack(
            [self.reconstruction_loss(o["reconstruction"], v, m) for o, v, m in zip(student, views, masks)]
        ).mean()
        w_cls, w_patch, w_rec = h.weights
        loss = w_cls * l_cls + w_patch * l_patch + w_rec * l_rec
        for name, value in (("cls", l_cls), ("patch", l_patch), ("rec", l_rec)):
            self.log(f"train/{name}", value)
        self.log("train/loss", loss, prog_bar=True)
        if "matched" in batch:  # the embedding sampler: how many pairs found a match above its score
            self.log("train/matched_fraction", torch.as_tensor(batch["matched"]).float().mean())
        return loss

    def reconstruction_loss(self, predicted: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE of the student's reconstruction on masked voxels (``all``: every voxel)."""
        if self.hparams.reconstruction == "all":
            return nn.functional.mse_loss(predicted, clean)
        flat = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [B, voxels, C]
        return masked_embedding_mse(flat(predicted), flat(clean), mask.flatten(1))

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        h = self.hparams
        step, total = self._progress()
        if self._trainer is not None and self.trainer.optimizers:
            decay = cosine_schedule(step, total, h.weight_decay, h.weight_decay_end)
            set_weight_decay(self.trainer.optimizers[0], decay)

    def on_after_backward(self) -> None:
        if self.current_epoch < self.hparams.freeze_last_layer_epochs:
            for parameter in self.head.last_layers():
                parameter.grad = None

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        step, total = self._progress()
        momentum = cosine_schedule(step, total, self.hparams.momentum, 1.0)
        ema_update(self.teacher, self.student, momentum)
        ema_update(self.teacher_head, self.head, momentum)
