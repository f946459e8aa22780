"""INS (Qu et al., "Rethinking multiple instance learning for whole slide image classification: a good
instance classifier is all you need", IEEE TCSVT 2024): MIL as partial-label learning.

Every instance gets a candidate label set from its slide's label alone: instances of negative slides
are negative, ``Y = [1, 0]``; those of positive slides may be either, ``Y = [1, 1]``. An instance
classifier learns from per-instance soft labels that start at ``Y / |Y|`` and move, with a weight that
decays over training, towards the class of the nearest prototype within the candidate set. A
contrastive loss shapes the embedding the prototypes live in: MoCo's InfoNCE during warm-up, then
supervised contrastive learning with pseudo-label positives over the batch and a momentum queue.

    f = encoder(x_weak);  logits = classifier(f);  q = normalize(head(f))
    k = normalize(head_k(encoder_k(x_strong)))                   momentum copy, m = 0.999
    ŷ = argmax(softmax(logits) ⊙ Y)                             candidate-restricted prediction
    μ_ŷ ← normalize(0.9 μ_ŷ + 0.1 q)                             class prototypes, one instance at a time
    L = −Σ_c s_c log softmax(logits)_c + λ · L_cont              soft labels s, λ = 0.5
    after warm-up:  s ← φ s + (1 − φ) onehot(argmax(softmax(q μᵀ) ⊙ Y)),  φ: 0.95 → 0.8 over training

Where medssl departs from the paper, by measurement (``pipelines/mil_experiment.py``, docs/methods/ins.md):

- ``soft_label_start="bag"``: soft labels of positive-slide instances start at the slide's label,
  ``[0, 1]``, not at ``Y / |Y| = [0.5, 0.5]`` (``"candidates"``, the paper's). From ``[0.5, 0.5]`` the
  best a classifier can say of a lesion instance is 0.5 (its label is a coin flip in every bag it
  appears in), while normal tissue is also taught ``[1, 0]`` by negative slides; with any class
  imbalance lesion probabilities settle below 0.5, ``argmax(p ⊙ Y)`` is never positive, the positive
  prototype never forms and every soft label drifts negative (measured: 0 % positive). The reference
  code escapes this only because its CAMELYON16 loader builds candidate sets from patch annotations.
  Starting from the slide label, the negative slides pull normal tissue down, lesions stay up, and the
  prototypes then correct the soft labels of normal tissue in positive slides.
- ``bag_rule="topk"`` (the mean of the ``top_k`` highest instance probabilities) by default: the paper
  scores slides by the mean, which ranks slides (bag AUROC) but at a 0.5 threshold calls a slide
  positive only when most of its tiles are lesion. ``mean`` and ``max`` remain options.

Training sees slide labels only: :class:`~medssl.data.bags.InstanceDataset` returns nothing
instance-level, unlike the reference code's CAMELYON16 loader, which builds candidate sets from patch
annotations.

Instances are tile pixels (``backbone``, a ResNet trained end to end) or precomputed embeddings
(``in_dim``, an MLP encoder). Embeddings cannot be cropped or colour-jittered, so their two views are
two dropouts of the same vector (``feature_dropout``); the reference feature scripts feed the same
vector twice.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from medssl.losses.contrastive import supervised_contrastive
from medssl.methods.base import SlideClassifier
from medssl.nn.backbones import build_encoder
from medssl.nn.distributed import gather
from medssl.nn.heads import ProjectionHead
from medssl.nn.momentum import MomentumQueue, ema_update


def candidate_labels(bag_labels: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` candidate sets from slide labels: negative slide (0) → ``[1, 0]``, positive (1) → ``[1, 1]``."""
    if ((bag_labels != 0) & (bag_labels != 1)).any():
        raise ValueError(f"INS needs binary slide labels (0 negative, 1 positive), got {bag_labels.unique().tolist()}")
    return torch.stack([torch.ones_like(bag_labels), bag_labels], dim=1).float()


def initial_soft_labels(candidates: torch.Tensor, rule: str = "bag") -> torch.Tensor:
    """Where an instance's soft label starts. ``candidates``: uniform over the candidate set, ``Y / |Y|``
    (the paper's, from PiCO: ``[0.5, 0.5]`` in positive slides); ``bag``: the slide's label, one-hot
    (``[0, 1]`` in positive slides). Negative slides start at ``[1, 0]`` either way."""
    if rule == "candidates":
        return candidates / candidates.sum(1, keepdim=True)
    if rule == "bag":
        return F.one_hot(candidates[:, 1].long(), 2).to(candidates.dtype)
    raise ValueError(f"soft_label_start must be 'candidates' or 'bag', got {rule!r}")


def confidence_weight(epoch: int, max_epochs: int, start: float = 0.95, end: float = 0.8) -> float:
    """φ of the soft-label moving average, linear from ``start`` to ``end`` over training."""
    return start + (end - start) * epoch / max(1, max_epochs)


def bag_probability(instance_probabilities: torch.Tensor, rule: str = "mean", top_k: int = 10) -> torch.Tensor:
    """A slide's positive probability from its instances': ``mean`` (the paper's rule), ``max``, or
    ``topk`` (the mean of the ``top_k`` highest; medssl's default)."""
    if rule == "mean":
        return instance_probabilities.mean()
    if rule == "max":
        return instance_probabilities.max()
    if rule == "topk":
        return instance_probabilities.topk(min(top_k, len(instance_probabilities))).values.mean()
    raise ValueError(f"bag rule must be 'mean', 'max' or 'topk', got {rule!r}")


class INS(SlideClassifier):
    """Defaults are the paper's except ``soft_label_start`` and ``bag_rule`` (module docstring): queue 8192,
    momentum 0.999, prototype momentum 0.9, τ = 0.07, λ = 0.5, φ from 0.95 to 0.8, 128-d projections,
    SGD at 0.01 (momentum 0.9, weight decay 1e-3), constant LR.
    ``prototype_start`` is the reference code's ``prot_start``, the epoch the soft labels start moving and
    SupCon replaces InfoNCE (1 end to end, 20 on features). ``init_checkpoint`` starts the pixel
    encoder (``backbone``) and its momentum copy from a file's weights
    (:meth:`~medssl.methods.base.MedsslModule.load_init_checkpoint`)."""

    instance_score_name = "instance probability"
    prototypes: torch.Tensor
    soft_labels: torch.Tensor

    def __init__(
        self,
        backbone: dict | None = None,
        in_dim: int | None = None,
        hidden_dim: int = 512,
        proj_dim: int = 128,
        queue_size: int = 8192,
        momentum: float = 0.999,
        prototype_momentum: float = 0.9,
        temperature: float = 0.07,
        contrastive_weight: float = 0.5,
        prototype_start: int = 1,
        confidence_start: float = 0.95,
        confidence_end: float = 0.8,
        feature_dropout: float = 0.1,
        bag_rule: str = "topk",
        top_k: int = 10,
        soft_label_start: str = "bag",
        num_instances: int | None = None,
        init_checkpoint: str | None = None,
        init_encoder: str = "encoder",
        **base,
    ):
        base = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-3, **base}
        super().__init__(**base)
        self.save_hyperparameters()
        if in_dim is not None:
            self.encoder = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
            width = hidden_dim
        else:
            self.encoder = build_encoder(**(backbone or {}))
            width = self.encoder.out_dim
        self.load_init_checkpoint(self.encoder)  # before the momentum copy, which starts from it
        self.classifier = nn.Linear(width, 2)
        self.head = ProjectionHead(width, width, proj_dim, layers=2, batch_norm=False)
        self.momentum_encoder, self.momentum_head = copy.deepcopy(self.encoder), copy.deepcopy(self.head)
        for parameter in (*self.momentum_encoder.parameters(), *self.momentum_head.parameters()):
            parameter.requires_grad = False
        self.queue = MomentumQueue(queue_size, proj_dim, with_labels=True)
        self.register_buffer("prototypes", torch.zeros(2, proj_dim))
        # per-instance soft labels, NaN until the instance is first seen; sized from the training data
        self.register_buffer("soft_labels", torch.full((num_instances or 0, 2), float("nan")))

    def encoders(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    # -- per-instance state ----------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint["state_dict"].get("soft_labels")
        if saved is not None and saved.shape != self.soft_labels.shape:
            self.soft_labels = torch.full_like(saved, float("nan"), device=self.device)

    def _grow_soft_labels(self, size: int) -> None:
        """Extend the table (new rows NaN: not seen yet) to hold instance indices below ``size``. The
        model learns the number of instances from the indices it is given, so it never asks the data
        module; ``num_instances`` allocates the table up front instead."""
        if size > len(self.soft_labels):
            grown = torch.full((size, 2), float("nan"), dtype=self.soft_labels.dtype, device=self.soft_labels.device)
            grown[: len(self.soft_labels)] = self.soft_labels
            self.soft_labels = grown

    # -- inputs ----------------------------------------------------------------------------------
    def _views(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "views" in batch:
            return self.scale(batch["views"][0]), self.scale(batch["views"][1])
        x = self.scale(batch["instances"])
        p = self.hparams.feature_dropout
        return F.dropout(x, p, training=True), F.dropout(x, p, training=True)

    def instance_probabilities(self, instances: torch.Tensor) -> torch.Tensor:
        """Positive-class probability of each instance ``[N, ...] → [N]``."""
        return torch.softmax(self.classifier(self.encoder(self.scale(instances))), dim=-1)[:, 1]

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        weak, strong = self._views(batch)
        candidates = candidate_labels(batch["label"])
        index = batch["index"].long()

        features = self.encoder(weak)
        logits = self.classifier(features)
        q = F.normalize(self.head(features), dim=1)
        with torch.no_grad():
            ema_update(self.momentum_encoder, self.encoder, h.momentum)
            ema_update(self.momentum_head, self.head, h.momentum)
            k = F.normalize(self.momentum_head(self.momentum_encoder(strong)), dim=1)
            pseudo = (torch.softmax(logits, dim=1) * candidates).argmax(1)
            prototype_scores = torch.softmax(q @ self.prototypes.T, dim=1)  # before this batch moves them
            self._update_prototypes(gather(q.detach()), gather(pseudo))

        soft = self._soft_labels(index, candidates)
        classification = -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()
        contrastive = self._contrastive(q, k, pseudo)
        loss = classification + h.contrastive_weight * contrastive

        if self.current_epoch >= h.prototype_start:
            phi = confidence_weight(
                self.current_epoch, self.trainer.max_epochs or 1, h.confidence_start, h.confidence_end
            )
            target = F.one_hot((prototype_scores * candidates).argmax(1), 2).float()
            self._set_soft_labels(index, phi * soft + (1 - phi) * target)
        self.queue.push(k, pseudo)
        self.log_dict(
            {"train/loss": loss, "train/classification": classification, "train/contrastive": contrastive},
            prog_bar=True,
            batch_size=len(index),
        )
        in_positive_slides = batch["label"] == 1
        if in_positive_slides.any():  # how many instances of positive slides are pseudo-labelled positive
            self.log(
                "train/positive_pseudo_labels",
                pseudo[in_positive_slides].float().mean(),
                batch_size=int(in_positive_slides.sum()),
            )
        return loss

    def _contrastive(self, q: torch.Tensor, k: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """Warm-up: MoCo InfoNCE (the positive is the instance's own key; the queue holds negatives).
        After: SupCon over [q; k; queue], positives = same pseudo-label, the anchor itself excluded."""
        h = self.hparams
        queued, queued_labels = self.queue.contents()
        n = len(q)
        if self.current_epoch < h.prototype_start:
            keys = torch.cat([k, queued.to(k.dtype)])
            positive = torch.zeros(n, len(keys), dtype=torch.bool, device=q.device)
            positive[:, :n] = torch.eye(n, dtype=torch.bool, device=q.device)
            return supervised_contrastive(q, keys, positive, h.temperature)
        keys = torch.cat([q, k, queued.to(q.dtype)])
        key_labels = torch.cat([pseudo, pseudo, queued_labels])
        positive = pseudo[:, None] == key_labels[None, :]
        self_mask = torch.zeros_like(positive)
        self_mask[:, :n] = torch.eye(n, dtype=torch.bool, device=q.device)
        return supervised_contrastive(q, keys, positive, h.temperature, self_mask=self_mask)

    @torch.no_grad()
    def _update_prototypes(self, q: torch.Tensor, pseudo: torch.Tensor) -> None:
        m = self.hparams.prototype_momentum
        for vector, label in zip(q, pseudo.tolist()):
            self.prototypes[label] = F.normalize(m * self.prototypes[label] + (1 - m) * vector, dim=0)

    def _soft_labels(self, index: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """This batch's soft labels; instances seen for the first time start at ``Y / |Y|``."""
        self._grow_soft_labels(int(index.max()) + 1)
        soft = self.soft_labels[index]
        unseen = torch.isnan(soft[:, 0])
        start = initial_soft_labels(candidates, self.hparams.soft_label_start)
        soft = torch.where(unseen[:, None], start, soft)
        self._set_soft_labels(index, soft)  # the whole batch, so every rank gathers the same sizes
        return soft

    @torch.no_grad()
    def _set_soft_labels(self, index: torch.Tensor, values: torch.Tensor) -> None:
        """Write on every rank, so the table stays identical under DDP whichever rank saw the instance."""
        index, values = gather(index), gather(values.detach().to(self.soft_labels.dtype))
        self._grow_soft_labels(int(index.max()) + 1)
        self.soft_labels[index] = values

    # -- whole-slide scoring -----------------------------------------------------------------------
    def start_bag(self) -> list:
        return []

    def add_piece(self, state: list, instances: torch.Tensor) -> None:
        state.append(self.instance_probabilities(instances))

    def finish_bag(self, state: list) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.cat(state)
        return bag_probability(probabilities, self.hparams.bag_rule, self.hparams.top_k), probabilities
