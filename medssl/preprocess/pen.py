"""Marker ink on a slide thumbnail: pathologists circle regions in green, blue, black (sometimes red) pen.

Ink is strongly stained to the saturation-based tissue detector, so without this it is kept as tissue and
its tiles poison SSL batches. The rules are on HSV of the thumbnail, chosen from the stains' real colours
(scikit-image's IHC image; H&E and DAB re-stained from it with scikit-image's stain vectors):

* **green** (hue 70-170°) and **blue** (190-250°) with saturation ≥ ``pen_min_saturation``. No stain used
  with H&E or DAB has a green hue; haematoxylin is blue-violet but pale (saturation ≤ 95 of 255 at full
  resolution, ≤ 45 at 8 µm/px on the IHC image), while marker blue is about 150-200.
* **black**: brightest channel ≤ ``pen_black_max_value`` (dense nuclei and DAB stay above ~65), or dark
  *and* grey (≤ ``pen_grey_max_value`` with saturation ≤ ``pen_grey_max_saturation``), which stained
  tissue never is.
* **red** (hue 340-10°, same saturation floor) only when asked: DAB is red-brown (hue 0-30°) and hits it
  on 1-2 % of IHC pixels, and so do red-orange tissues, so it is off by default.

Isolated pixels are dropped (a 3×3 opening) and the mask is grown by ``pen_grow_px`` to take the faint
edges of strokes. Special stains with green or blue dyes (trichrome, Alcian blue) need ``pen_ink=()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from medssl.preprocess.tissue import TissueParams

PEN_COLOURS = ("green", "blue", "black", "red")


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) as float32 (0 for grey pixels), without HSV's float64 copy of the image."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    cmax, cmin = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = np.where(cmax > cmin, cmax - cmin, 1.0)
    hue = np.where(cmax == r, (g - b) / delta % 6.0, np.where(cmax == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0))
    return np.where(cmax > cmin, hue * 60.0, 0.0).astype(np.float32)


def in_hue_range(hue: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low <= hue <= high``, wrapping through 0° when ``low > high`` (red: 340-10)."""
    return (hue >= low) & (hue <= high) if low <= high else (hue >= low) | (hue <= high)


def pen_ink_mask(rgb: np.ndarray, params: TissueParams) -> np.ndarray:
    """Boolean mask of marker ink of the colours in ``params.pen_ink`` on an ``[H, W, 3]`` thumbnail."""
    ink = np.zeros(rgb.shape[:2], dtype=bool)
    if not params.pen_ink:
        return ink
    value = rgb.max(axis=-1).astype(np.float32)
    chroma = value - rgb.min(axis=-1)
    sat = np.where(value > 0, chroma / np.maximum(value, 1.0), 0.0) * 255.0
    hue = hue_degrees(rgb)
    coloured = sat >= params.pen_min_saturation
    hues = {"green": params.pen_green_hue, "blue": params.pen_blue_hue, "red": params.pen_red_hue}
    for colour in params.pen_ink:
        if colour == "black":
            ink |= value <= params.pen_black_max_value
            ink |= (value <= params.pen_grey_max_value) & (sat <= params.pen_grey_max_saturation)
        else:
            ink |= coloured & in_hue_range(hue, *hues[colour])
    # casts: SciPy ships no type hints (as in medssl.preprocess.tissue)
    ink = cast(np.ndarray, ndimage.binary_opening(ink, structure=np.ones((3, 3), dtype=bool)))
    if params.pen_grow_px > 0 and ink.any():
        y, x = np.ogrid[-params.pen_grow_px : params.pen_grow_px + 1, -params.pen_grow_px : params.pen_grow_px + 1]
        ink = cast(np.ndarray, ndimage.binary_dilation(ink, structure=x * x + y * y <= params.pen_grow_px**2))
    return ink
