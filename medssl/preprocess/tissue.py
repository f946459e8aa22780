"""Tissue detection on a low-resolution thumbnail and per-tile tissue fractions.

The de-facto CPU baseline of the field (CLAM, slideflow, eva, MONAI all threshold HSV saturation):
stained tissue is coloured, glass and background are grey or white. We blur the saturation and
threshold it with hysteresis: pixels above Otsu's threshold (or a fixed one) are tissue for sure, and
fainter pixels down to a floor are kept when they touch them. Plain Otsu cuts faint stroma off the
edge of strongly stained tissue (Otsu lands halfway between glass and the mean stain); the floor also
stops a blank slide from splitting its own noise in two. Then we close small gaps, fill holes and drop
specks smaller than a physical area. Marker ink (:mod:`medssl.preprocess.pen`) is strongly coloured too:
it is left out of Otsu's threshold and taken out of the final mask, so tiles over ink lose tissue fraction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import numpy as np
from scipy import ndimage
from skimage.filters import apply_hysteresis_threshold, threshold_otsu

from medssl.preprocess.colour import channel_min, saturation
from medssl.preprocess.mask_filters import binary_closing_disk, fill_holes
from medssl.preprocess.pen import PEN_COLOURS, pen_ink_mask


@dataclass(frozen=True)
class TissueParams:
    """Thresholds for :func:`detect_tissue`; every field is recorded in the cache."""

    mask_mpp: float = 8.0  #: resolution (µm/px) of the thumbnail the mask is computed on
    saturation_threshold: float | None = None  #: fixed (high) threshold on 0..255 saturation; None = Otsu
    min_saturation: float = 15.0  #: floor: the low hysteresis threshold, and the least high threshold
    max_brightness: float = 250.0  #: pixels brighter than this (all channels) are background
    blur_px: int = 5  #: median filter width on the saturation, in mask pixels (0 = off)
    close_px: int = 4  #: radius of the morphological closing, in mask pixels (0 = off)
    fill_holes: bool = True
    min_area_um2: float = 20_000.0  #: connected tissue pieces smaller than this are dropped
    # Marker ink (see medssl.preprocess.pen): excluded from tissue; () keeps ink as tissue (the old behaviour)
    pen_ink: tuple[str, ...] = ("green", "blue", "black")  #: ink colours to exclude; "red" is opt-in
    pen_min_saturation: float = 100.0  #: coloured ink: HSV saturation (0..255) at least this
    pen_black_max_value: float = 50.0  #: black ink: brightest channel (0..255) at most this
    pen_grey_max_value: float = 120.0  #: ... or this dark and
    pen_grey_max_saturation: float = 25.0  #: ... no more saturated than this (stained tissue never is)
    pen_grow_px: int = 2  #: the ink mask is dilated by this radius (faint stroke edges), mask px
    pen_green_hue: tuple[float, float] = (70.0, 170.0)  #: degrees
    pen_blue_hue: tuple[float, float] = (190.0, 250.0)
    pen_red_hue: tuple[float, float] = (340.0, 10.0)  #: wraps through 0

    def __post_init__(self) -> None:
        unknown = [c for c in self.pen_ink if c not in PEN_COLOURS]
        if unknown:
            raise ValueError(f"unknown pen ink colour(s) {unknown}; choose from {', '.join(PEN_COLOURS)} or none")

    def as_dict(self) -> dict:
        """The fields recorded in the cache. With ink detection off the ink fields are left out: the
        masks are then exactly those of medssl before ink detection, so caches tiled then resume."""
        fields = asdict(self)
        if not self.pen_ink:
            fields = {name: value for name, value in fields.items() if not name.startswith("pen_")}
        return fields


@dataclass
class TissueMasks:
    """What :func:`find_tissue` finds on a thumbnail."""

    mask: np.ndarray  #: bool tissue mask, ink excluded
    ink: np.ndarray  #: bool marker-ink mask (all False when ink detection is off)
    threshold: float  #: the high saturation threshold used

    @property
    def pen_fraction(self) -> float:
        """Ink pixels over tissue-or-ink pixels: the share of what looked like tissue that is ink."""
        both = int((self.mask | self.ink).sum())
        return float(self.ink.sum()) / both if both else 0.0


def detect_tissue(rgb: np.ndarray, params: TissueParams) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an ``[H, W, 3]`` thumbnail at ``params.mask_mpp``, and the threshold used."""
    found = find_tissue(rgb, params)
    return found.mask, found.threshold


def find_tissue(rgb: np.ndarray, params: TissueParams) -> TissueMasks:
    """Tissue and marker-ink masks of an ``[H, W, 3]`` thumbnail at ``params.mask_mpp``."""
    sat = saturation(rgb)
    ink = pen_ink_mask(rgb, params, sat)
    if params.blur_px > 1:
        sat = cast(np.ndarray, ndimage.median_filter(sat, size=params.blur_px))
    if params.saturation_threshold is not None:
        threshold = float(params.saturation_threshold)
    else:
        stained = sat[~ink] if ink.any() and not ink.all() else sat  # ink would pull Otsu up
        otsu = threshold_otsu(stained) if np.ptp(stained) > 0 else float(stained.max())
        threshold = max(float(otsu), params.min_saturation)
    low = min(params.min_saturation, threshold)
    mask = apply_hysteresis_threshold(sat, low, threshold) if threshold > low else sat > threshold
    mask &= ~(channel_min(rgb) > params.max_brightness)
    if params.close_px > 0:
        mask = binary_closing_disk(mask, params.close_px)  # padded: tissue at the border is not eroded
    if params.fill_holes:
        mask = fill_holes(mask)
    mask &= ~ink  # after closing and filling, which would put ink back
    min_pixels = params.min_area_um2 / (params.mask_mpp**2)
    if min_pixels > 1 and mask.any():
        # cast: SciPy ships no type hints, and pyright's inference from its source includes the int it
        # returns when given an ``output`` array, which this call does not pass
        labels, n = cast(tuple[np.ndarray, int], ndimage.label(mask))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_pixels
        keep[0] = False
        mask = keep[labels]
    return TissueMasks(mask=mask, ink=ink, threshold=threshold)


def box_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each box covered by ``mask``, with fractional box edges handled exactly.

    ``boxes`` is ``[N, 4]`` float (x0, y0, x1, y1) in mask pixel units. The summed-area table of a
    piecewise-constant mask is bilinear inside every pixel, so bilinear interpolation of it gives the
    exact covered area of any axis-aligned box.
    """
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.float64)
    sat[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    x0 = np.clip(boxes[:, 0], 0, w)
    y0 = np.clip(boxes[:, 1], 0, h)
    x1 = np.clip(boxes[:, 2], 0, w)
    y1 = np.clip(boxes[:, 3], 0, h)
    area = _bilinear(sat, x1, y1) - _bilinear(sat, x0, y1) - _bilinear(sat, x1, y0) + _bilinear(sat, x0, y0)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.clip(area / np.maximum(box_area, 1e-12), 0.0, 1.0)


def _bilinear(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = table.shape
    xi = np.clip(np.floor(x).astype(np.int64), 0, w - 2)
    yi = np.clip(np.floor(y).astype(np.int64), 0, h - 2)
    fx, fy = x - xi, y - yi
    return (
        table[yi, xi] * (1 - fx) * (1 - fy)
        + table[yi, xi + 1] * fx * (1 - fy)
        + table[yi + 1, xi] * (1 - fx) * fy
        + table[yi + 1, xi + 1] * fx * fy
    )
