"""Cross-attention alignment of one token set to another (Alice's CASA module, Jiang et al. ICCV 2023)."""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionAlignment(nn.Module):
    """One post-norm cross-attention block: queries ``[B, Nq, D]`` attend to a context ``[B, Nk, D]``.

    ``x = LN(q + MHA(q, ctx, ctx))`` then ``LN(x + FFN(x))`` with a GELU FFN ``D → ratio·D → D``. There is no
    self-attention, so each query's output depends on the context but never on the other queries, and no
    positional term, so the context is a set. Alice lets the student's encoder-token logits (queries) attend to
    the student's or the teacher's decoder-token logits (context) before the token-level distillation loss.
    ``context_mask [B, Nk]`` (True = real token) lets padded context sets align like unpadded ones.
    """

    def __init__(self, dim: int, heads: int = 8, ffn_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_ratio * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_ratio * dim, dim),
        )
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        padding = None if context_mask is None else ~context_mask.bool()  # MHA masks out True entries
        attended, _ = self.attention(queries, context, context, key_padding_mask=padding, need_weights=False)
        x = self.attention_norm(queries + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))
