"""Masks for masked image modelling of volumes."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def axial_block_mask(
    batch: int, shape: Sequence[int], block: int = 16, ratio: float = 0.75, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``bool [batch, D, H, W]``: square blocks of ``block``² voxels on the axial (H, W) plane, the same
    blocks through every slice (extruded along z), ``round(ratio · blocks)`` of them masked per sample,
    as Alice masks its student's input (16 blocks of 16² on a 64² plane, 12 masked). H and W must be
    multiples of ``block``."""
    depth, height, width = (int(s) for s in shape)
    if height % block or width % block:
        raise ValueError(f"the axial plane {height}x{width} is not a whole number of {block}x{block} blocks")
    rows, cols = height // block, width // block
    count = round(ratio * rows * cols)
    order = torch.rand(batch, rows * cols, generator=generator).argsort(dim=1)
    blocks = (order < count).reshape(batch, rows, cols)
    plane = blocks.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)
    return plane[:, None].expand(batch, depth, height, width)
