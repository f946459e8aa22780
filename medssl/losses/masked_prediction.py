"""Masked embedding prediction: reconstruct the embeddings of hidden tokens from their context."""

from __future__ import annotations

import math

import torch

from medssl.losses.precision import full_precision


def random_token_mask(batch: int, tokens: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``bool [batch, tokens]`` with exactly ``ceil(ratio · tokens)`` random tokens masked per row (at
    least one, at most all but one, so there is always something to predict and something to predict from)."""
    count = min(max(1, math.ceil(ratio * tokens)), max(1, tokens - 1))
    order = torch.rand(batch, tokens, generator=generator).argsort(dim=1)
    return order < count


@full_precision
def masked_embedding_mse(
    predicted: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    reduction: str = "masked",
    mask_ratio: float | None = None,
) -> torch.Tensor:
    """Mean squared error between ``predicted`` and ``target`` token embeddings ``[B, N, D]``.

    ``reduction="masked"`` (the paper's objective, as in MAE): the mean over the masked tokens ``mask
    [B, N]`` only, each token's error averaged over its D features. ``"reference"`` reproduces the joint
    2D/3D code: the mean over *all* tokens, divided by ``int(mask_ratio · N)`` (its mask count, computed
    with ``int`` where the mask itself took ``ceil``), so visible tokens, which the model can copy,
    dilute the signal."""
    error = (predicted - target).pow(2).mean(dim=-1)  # [B, N]
    if reduction == "masked":
        return error[mask].mean()
    if reduction == "reference":
        if mask_ratio is None:
            raise ValueError("reduction='reference' divides by int(mask_ratio * N): pass mask_ratio")
        return error.mean() / max(1, int(mask_ratio * mask.shape[1]))
    raise ValueError(f"reduction must be 'masked' or 'reference', got {reduction!r}")
