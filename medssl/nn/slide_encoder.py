"""A slide encoder over a set of patch features: MADELEINE's multi-head gated-attention pooling (Jaume et
al., ECCV 2024), shared by every stain.

Each patch feature passes a pre-attention MLP that widens it into ``heads`` token vectors of ``hidden_dim``;
each head pools its own vectors with gated attention (:class:`~medssl.nn.attention.GatedAttentionPool`,
Ilse et al. 2018); the heads' pooled vectors are concatenated and projected to the slide embedding. A token
projector maps the concatenated pre-attention tokens to small local tokens for token-level losses (GOT).
An optional learned stain embedding is concatenated to every patch feature, so one encoder can tell its
stains apart while sharing all other weights. ``input_norm`` standardises every patch-feature dimension
first (a BatchNorm without affine parameters over all patches of the batch, running statistics at
inference): not in the paper, whose CONCH features are informative as they come, but weak features whose
slides differ by a few per cent of their common value (a random-init CNN) give every slide nearly the same
embedding without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.nn.attention import GatedAttentionPool


def _block(dim_in: int, dim_out: int, dropout: float) -> list[nn.Module]:
    return [nn.Linear(dim_in, dim_out), nn.LayerNorm(dim_out), nn.GELU(), nn.Dropout(dropout)]


@dataclass
class SlideEncoding:
    """What :class:`MultiHeadSlideEncoder` returns for ``N`` slides of ``T`` patches."""

    slide: torch.Tensor  #: ``[N, embed_dim]`` slide embeddings
    tokens: torch.Tensor  #: ``[N, T, heads * hidden_dim]`` pre-attention tokens (project with ``local_tokens``)
    attention: torch.Tensor  #: ``[N, heads, T]`` attention weights of each head (sum to 1 over real patches)


class MultiHeadSlideEncoder(nn.Module):
    """``in_dim``-d patch features ``[N, T, in_dim]`` → slide embeddings ``[N, embed_dim]``.

    ``stains`` > 0 with ``stain_dim`` > 0 adds ``nn.Embedding(stains, stain_dim)``, concatenated to every
    patch feature of a slide of that stain (pass ``stain [N]``). Defaults follow MADELEINE's released
    scripts: hidden 512, 4 heads, 512-d slide and 128-d local tokens, dropout 0.1 in the MLP and 0.25 in
    the attention."""

    def __init__(
        self,
        in_dim: int = 512,
        hidden_dim: int = 512,
        heads: int = 4,
        embed_dim: int = 512,
        token_dim: int = 128,
        dropout: float = 0.1,
        attention_dropout: float = 0.25,
        stains: int = 0,
        stain_dim: int = 0,
        input_norm: bool = False,
    ):
        super().__init__()
        if heads < 1 or hidden_dim < 1:
            raise ValueError(f"need heads ≥ 1 and hidden_dim ≥ 1, got {heads} and {hidden_dim}")
        self.in_dim, self.hidden_dim, self.heads = in_dim, hidden_dim, heads
        self.stain_embedding = nn.Embedding(stains, stain_dim) if stains > 0 and stain_dim > 0 else None
        self.input_norm = nn.BatchNorm1d(in_dim, affine=False) if input_norm else None
        width = in_dim + (stain_dim if self.stain_embedding is not None else 0)
        self.pre_attention = nn.Sequential(
            *_block(width, hidden_dim, dropout),
            *_block(hidden_dim, hidden_dim, dropout),
            *_block(hidden_dim, hidden_dim * heads, dropout),
        )
        self.pools = nn.ModuleList(
            GatedAttentionPool(hidden_dim, hidden_dim, heads=1, dropout=attention_dropout) for _ in range(heads)
        )
        self.projector = nn.Linear(hidden_dim * heads, embed_dim)
        self.token_projector = nn.Linear(hidden_dim * heads, token_dim)

    def forward(
        self, patches: torch.Tensor, mask: torch.Tensor | None = None, stain: torch.Tensor | None = None
    ) -> SlideEncoding:
        """``patches [N, T, in_dim]``; ``mask [N, T]`` (True = real patch) for padded sets; ``stain [N]``
        (long) when the encoder has a stain embedding."""
        if patches.shape[-1] != self.in_dim:
            raise ValueError(
                f"patch features have {patches.shape[-1]} dims but the slide encoder was built with in_dim="
                f"{self.in_dim}; set it to the patch encoder's out_dim"
            )
        x = patches.float()
        if self.input_norm is not None:
            x = self._standardise(x, mask)
        if self.stain_embedding is not None:
            if stain is None:
                raise ValueError("this slide encoder has a stain embedding: pass stain [N]")
            x = torch.cat([x, self.stain_embedding(stain)[:, None, :].expand(-1, x.shape[1], -1)], dim=-1)
        tokens = self.pre_attention(x)  # [N, T, H * hidden]
        per_head = tokens.unflatten(-1, (self.heads, self.hidden_dim))
        pooled, attention = [], []
        for h, pool in enumerate(self.pools):
            vector, weights = pool(per_head[:, :, h], mask)
            pooled.append(vector)
            attention.append(weights[:, 0])
        slide = self.projector(torch.cat(pooled, dim=-1))
        return SlideEncoding(slide, tokens, torch.stack(attention, dim=1))

    def _standardise(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The input BatchNorm over real patches only (padding neither enters the statistics nor changes)."""
        assert self.input_norm is not None
        if mask is None:
            return self.input_norm(x.flatten(0, 1)).view_as(x)
        real = mask.bool()
        return x.masked_scatter(real[..., None], self.input_norm(x[real]))

    def local_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Small per-patch tokens ``[..., token_dim]`` from pre-attention tokens (any subset of them)."""
        return self.token_projector(tokens)
