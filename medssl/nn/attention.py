"""Attention pooling of instance features into a bag feature (Ilse et al. 2018, gated ABMIL)."""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionPool(nn.Module):
    """``a = softmax_n( w_hᵀ (tanh(V h_n) ⊙ σ(U h_n)) )`` per head, bag feature ``Σ_n a_n h_n``.

    ``instances [B, N, D]`` with ``mask [B, N]`` (True = real instance) so padded bags pool exactly like
    unpadded ones. Returns the pooled ``[B, heads * D]`` (heads concatenated) and attention ``[B, heads, N]``.
    """

    def __init__(self, dim: int, hidden_dim: int = 128, heads: int = 1, gated: bool = True, dropout: float = 0.0):
        super().__init__()
        self.value = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout))
        self.gate = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Sigmoid(), nn.Dropout(dropout)) if gated else None
        self.score = nn.Linear(hidden_dim, heads)
        self.heads = heads

    def logits(self, instances: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention ``[..., N, heads]``: what the softmax over instances runs on."""
        hidden = self.value(instances)
        if self.gate is not None:
            hidden = hidden * self.gate(instances)
        return self.score(hidden)

    def forward(self, instances: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(instances).transpose(1, 2)  # [B, heads, N]
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :].bool(), float("-inf"))
        attention = torch.softmax(logits, dim=-1)
        pooled = torch.einsum("bhn,bnd->bhd", attention, instances)
        return pooled.flatten(1), attention
