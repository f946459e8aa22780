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

from medssl.preprocess.colour import channel_max, hue_degrees, saturation

if TYPE_CHECKING:
    from medssl.preprocess.tissue import TissueParams

PEN_COLOURS = ("green", "blue", "black", "red")


def in_hue_range(hue: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low <= hue <= high``, wrapping through 0° when ``low > high`` (red: 340-10)."""
    return (hue >= low) & (hue <= high) if low <= high else (hue >= low) | (hue <= high)


def pen_ink_mask(rgb: np.ndarray, params: TissueParams, sat: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of marker ink of the colours in ``params.pen_ink`` on an ``[H, W, 3]`` thumbnail;
    ``sat``: its :func:`saturation`, when the caller has it already."""
    ink = np.zeros(rgb.shape[:2], dtype=bool)
    if not params.pen_ink:
        return ink
    value = channel_max(rgb)
    sat = saturation(rgb) if sat is None else sat
    coloured = sat >= params.pen_min_saturation
    hue = np.zeros(rgb.shape[:2], dtype=np.float32)
    hue[coloured] = hue_degrees(rgb[coloured])  # only where a hue rule can fire: few pixels on most slides
    hues = {"green": params.pen_green_hue, "blue": params.pen_blue_hue, "red": params.pen_red_hue}
    for colour in params.pen_ink:
        if colour == "black":
            ink |= value <= params.pen_black_max_value
            ink |= (value <= params.pen_grey_max_value) & (sat <= params.pen_grey_max_saturation)
        else:
            ink |= coloured & in_hue_range(hue, *hues[colour])
    return _clean_ink(ink, params.pen_grow_px)


def _clean_ink(ink: np.ndarray, grow_px: int) -> np.ndarray:
    """Drop isolated pixels (a 3×3 opening) and grow the rest by ``grow_px``.

    Both steps only look ``1 + grow_px`` pixels around ink, so they run on the candidates' bounding box
    with that margin (zeros outside it are the true values): the same mask, at a fraction of the cost
    of whole-thumbnail morphology when ink is small or absent.
    """
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    if len(rows) == 0:
        return ink
    margin = 2 + max(grow_px, 0)
    y0, y1 = max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, ink.shape[0])
    x0, x1 = max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, ink.shape[1])
    # casts: SciPy ships no type hints (as in medssl.preprocess.tissue)
    box = cast(np.ndarray, ndimage.binary_opening(ink[y0:y1, x0:x1], structure=np.ones((3, 3), dtype=bool)))
    if grow_px > 0 and box.any():
        y, x = np.ogrid[-grow_px : grow_px + 1, -grow_px : grow_px + 1]
        box = cast(np.ndarray, ndimage.binary_dilation(box, structure=x * x + y * y <= grow_px**2))
    cleaned = np.zeros_like(ink)
    cleaned[y0:y1, x0:x1] = box
    return cleaned
