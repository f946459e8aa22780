"""The input convention every medssl encoder shares, written once: uint8 pixels are divided by 255,
float inputs (normalised radiology arrays, views already augmented) pass through as float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float32 0..1; float images pass through (as float32)."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``[B, C, *spatial]`` at the end of each spatial axis up to a multiple of ``multiple``
    (networks that halve the input a fixed number of times; their outputs are cropped back)."""
    pad = [(-size) % multiple for size in images.shape[2:]]
    if not any(pad):
        return images
    return F.pad(images, [w for amount in reversed(pad) for w in (0, amount)])
