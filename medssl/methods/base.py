"""What every SSL method shares: the encoder, input scaling, optimiser with warm-up + cosine schedules,
and label-free / labelled monitors on the validation set (RankMe, leave-one-out kNN, a 2-fold linear
probe). A method subclasses :class:`SSLMethod`, builds its heads and losses, and implements
:meth:`training_step`."""

from __future__ import annotations

import torch
import lightning.pytorch as pl

from medssl.eval import knn_predict, linear_probe_accuracy, rankme
from medssl.methods.schedules import configure_optimizer
from medssl.nn.backbones import build_encoder


class SSLMethod(pl.LightningModule):
    """Base LightningModule. ``backbone`` is the :func:`~medssl.nn.backbones.build_encoder` config
    (``name``, ``spatial_dims``, ``in_channels``, ...); ``lr`` is for a batch of 256 and scales linearly."""

    def __init__(self, backbone: dict | None = None, optimizer: str = "adamw", lr: float = 1e-3,
                 weight_decay: float = 1e-4, warmup_epochs: float = 1.0, min_lr: float = 1e-6,
                 knn_k: int = 20, knn_temperature: float = 0.07):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_encoder(**(backbone or {}))
        self._val_features: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    # -- inputs -------------------------------------------------------------------------------
    @staticmethod
    def scale(images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 → float 0..1 (views from medssl transforms are already float)."""
        return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of images, the representation that is exported and evaluated."""
        return self.encoder(self.scale(images))

    def embed_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Features of each view; consecutive views of one size go through the encoder together
        (multi-crop: one pass for the global crops, one for the local ones)."""
        features, start = [], 0
        while start < len(views):
            stop = start + 1
            while stop < len(views) and views[stop].shape == views[start].shape:
                stop += 1
            features.extend(self.embed(torch.cat(views[start:stop])).chunk(stop - start))
            start = stop
        return features

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        return configure_optimizer(self, h.optimizer, h.lr, h.weight_decay, h.warmup_epochs, h.min_lr)

    # -- monitors -----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        features = self.embed(batch["image"])
        self._val_features.append(features.detach().float().cpu())
        labels = batch.get("label")  # a class per sample; segmentation maps and unlabelled data: RankMe only
        if labels is None or labels.ndim != 1:
            labels = torch.full((len(features),), -1, dtype=torch.long)
        self._val_labels.append(labels.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        """Monitors on the whole validation set. Every rank reads all of it (the eval loaders are not
        split), so the values agree across ranks without gathering, and no sample is counted twice."""
        if not self._val_features:
            return
        features, labels = torch.cat(self._val_features), torch.cat(self._val_labels)
        self._val_features, self._val_labels = [], []
        self.log("val/rankme", rankme(features), sync_dist=True)
        accuracy = leave_one_out_knn(features, labels, self.hparams.knn_k, self.hparams.knn_temperature)
        if accuracy is not None:
            self.log("val/knn_accuracy", accuracy, sync_dist=True)
        probe = linear_probe_accuracy(features, labels)
        if probe is not None:
            self.log("val/linear_probe_accuracy", probe, sync_dist=True)


def leave_one_out_knn(features: torch.Tensor, labels: torch.Tensor, k: int, temperature: float) -> float | None:
    """kNN accuracy of each labelled sample against all the others (None without two classes)."""
    keep = labels >= 0
    features, labels = features[keep], labels[keep]
    if len(labels) < 3 or labels.unique().numel() < 2:
        return None
    num_classes = int(labels.max()) + 1
    correct = 0
    for i in range(len(labels)):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, len(labels))])
        scores = knn_predict(features[others], labels[others], features[i : i + 1], num_classes, k, temperature)
        correct += int(scores.argmax(1).item() == labels[i].item())
    return correct / len(labels)


class TwoViewMethod(SSLMethod):
    """Methods that embed two views of each image through ``self.projector`` and compare them with
    :meth:`pair_loss` (SimCLR, Barlow Twins, ...)."""

    projector: torch.nn.Module

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        view1, view2 = batch["views"][:2]  # separate passes: BatchNorm sees one view at a time
        loss = self.pair_loss(self.projector(self.embed(view1)), self.projector(self.embed(view2)))
        self.log("train/loss", loss, prog_bar=True)
        return loss
