"""The input convention every medssl encoder shares, written once: uint8 pixels are divided by 255,
float inputs (normalised radiology arrays, views already augmented) pass through as float32."""

from __future__ import annotations

import torch


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float32 0..1; float images pass through (as float32)."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
