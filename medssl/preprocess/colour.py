"""Per-pixel colour quantities of RGB thumbnails (HSV value, saturation, hue), computed fast.

Tissue detection and marker-ink rules both work on HSV of a whole-slide thumbnail; on a 1280² thumbnail
the textbook NumPy forms (``rgb.max(axis=-1)``, ``skimage.color.rgb2hsv``) cost more than reading the
thumbnail, so these use element-wise passes and compute hue only where asked.
"""

from __future__ import annotations

import numpy as np


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """``rgb.max(axis=-1)`` (HSV value) as two element-wise passes: NumPy's reduction over a 3-long last
    axis is about ten times slower."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_min(rgb: np.ndarray) -> np.ndarray:
    """``rgb.min(axis=-1)``, fast (see :func:`channel_max`)."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0..255 as float32 (max-min over max, 0 for black)."""
    cmax = channel_max(rgb).astype(np.float32)
    cmin = channel_min(rgb).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(cmax > 0, (cmax - cmin) / cmax, 0.0)
    return (sat * 255.0).astype(np.float32)


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) as float32 (0 for grey pixels), without HSV's float64 copy of the image."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    cmax, cmin = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = np.where(cmax > cmin, cmax - cmin, 1.0)
    hue = np.where(cmax == r, (g - b) / delta % 6.0, np.where(cmax == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0))
    return np.where(cmax > cmin, hue * 60.0, 0.0).astype(np.float32)
