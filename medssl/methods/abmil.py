"""Attention-based deep MIL (Ilse, Tomczak & Welling, ICML 2018), gated attention: the baseline every
slide-classification method is compared with.

Instance embeddings ``h_n`` (from ``medssl embed``) pass a fully connected layer, gated attention
weighs them, ``a_n = softmax_n(wᵀ(tanh(V h_n) ⊙ σ(U h_n)))``, and the bag feature ``Σ a_n h_n`` is
classified. Trained on slide labels with cross-entropy, one padded batch of bags at a time.

Whole-slide inference runs piece by piece with an online softmax (the running maximum, normaliser and
weighted sum of a streaming log-sum-exp), so a bag of 100,000 instances costs one piece of memory and
gives exactly the one-pass result. The instance score (heatmaps, instance AUROC) is the attention
*logit* ``wᵀ(tanh(V h_n) ⊙ σ(U h_n))``: the softmax that turns it into attention normalises within each
slide, so softmax weights of different slides are not on one scale (a slide with many lesion tiles
spreads its attention thin) and pooling them across slides understates how well ABMIL localises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medssl.methods.base import SlideClassifier
from medssl.nn.attention import GatedAttentionPool


class ABMIL(SlideClassifier):
    """``in_dim``: the embedding size (the encoder's ``out_dim``); ``hidden_dim``: the first layer's
    width; ``attention_dim``: the gated attention's (128 in the paper)."""

    instance_score_name = "attention_logit"
    stretch_heatmaps = True

    def __init__(
        self,
        in_dim: int = 512,
        hidden_dim: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = True,
        **base,
    ):
        base = {"lr": 2e-4, "weight_decay": 1e-4, **base}
        super().__init__(**base)
        self.save_hyperparameters()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttentionPool(hidden_dim, attention_dim, heads=1, gated=gated, dropout=dropout)
        self.classifier = nn.Linear(hidden_dim, 2)  # negative, positive

    def forward(self, instances: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bag logits ``[B, C]`` and attention ``[B, N]`` of padded bags ``[B, N, D]``."""
        self._check_width(instances)
        pooled, attention = self.attention(self.embed(instances.float()), mask)
        return self.classifier(pooled), attention[:, 0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, _ = self(batch["instances"], batch.get("mask"))
        loss = F.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    # -- whole-slide scoring, piece by piece ------------------------------------------------------
    def start_bag(self) -> dict:
        return {"max": None, "normaliser": None, "pooled": None, "logits": []}

    def add_piece(self, state: dict, instances: torch.Tensor) -> None:
        self._check_width(instances)
        hidden = self.embed(instances.float())
        logits = self.attention.logits(hidden)[:, 0]  # [n]
        state["logits"].append(logits)
        top = logits.max()
        if state["max"] is None:
            state["max"], state["normaliser"], state["pooled"] = (
                top,
                logits.new_zeros(()),
                hidden.new_zeros(hidden.shape[1]),
            )
        new_max = torch.maximum(state["max"], top)
        rescale = torch.exp(state["max"] - new_max)
        weights = torch.exp(logits - new_max)
        state["normaliser"] = state["normaliser"] * rescale + weights.sum()
        state["pooled"] = state["pooled"] * rescale + weights @ hidden
        state["max"] = new_max

    def finish_bag(self, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = state["pooled"] / state["normaliser"]
        probability = torch.softmax(self.classifier(pooled), dim=-1)[-1]
        return probability, torch.cat(state["logits"])

    def _check_width(self, instances: torch.Tensor) -> None:
        if instances.shape[-1] != self.hparams.in_dim:
            raise ValueError(
                f"instances have {instances.shape[-1]} features but ABMIL was built with "
                f"in_dim={self.hparams.in_dim}; set model.init_args.in_dim to the encoder's out_dim"
            )
