"""The fast tissue-mask morphology gives SciPy's exact pixels (SciPy is the oracle), borders included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medssl.preprocess import tissue
from medssl.preprocess.mask_filters import binary_closing_disk, fill_holes
from medssl.preprocess.tissue import TissueParams, find_tissue


def _scipy_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """The closing tissue detection used before: SciPy on the zero-padded mask, cropped back."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    disk = x * x + y * y <= radius * radius
    return ndimage.binary_closing(np.pad(mask, radius), structure=disk)[radius:-radius, radius:-radius]


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("density", [0.05, 0.5, 0.9])
def test_disk_closing_equals_scipy(rng, radius, density):
    for shape in [(1, 1), (3, 9), (40, 53)]:
        mask = rng.random(shape) < density
        np.testing.assert_array_equal(binary_closing_disk(mask, radius), _scipy_closing(mask, radius))


def test_disk_closing_touching_the_border_and_empty():
    mask = np.zeros((30, 30), dtype=bool)
    assert not binary_closing_disk(mask, 4).any()
    mask[:, :3] = True  # a strip on the left edge with a gap a radius-4 disk bridges
    mask[10:12, :3] = False
    closed = binary_closing_disk(mask, 4)
    np.testing.assert_array_equal(closed, _scipy_closing(mask, 4))
    assert closed[:10, :3].all() and closed[12:, :3].all()  # the padding keeps the border from eroding
    assert closed[10:12, 1].all()  # the gap is bridged


@pytest.mark.parametrize("density", [0.0, 0.3, 0.55, 0.7, 1.0])
def test_fill_holes_equals_scipy(rng, density):
    for shape in [(1, 1), (1, 6), (4, 4), (45, 38)]:
        mask = rng.random(shape) < density
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_fill_holes_background_is_four_connected():
    ring = np.zeros((7, 7), dtype=bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False  # a hole ...
    ring[1, 1] = False  # a notch from outside that touches the hole only diagonally: still a hole
    filled = fill_holes(ring)
    np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(ring))
    assert filled[2:5, 2:5].all() and not filled[1, 1] and not filled[0].any()


def test_find_tissue_unchanged_from_the_scipy_filters(rng, monkeypatch):
    # A thumbnail with stained blobs, faint stroma, noise and ink, touching the borders
    h, w = 90, 120
    rgb = np.clip(rng.normal(236, 3, size=(h, w, 3)), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[0:h, 0:w]
    rgb[(ys - 30) ** 2 + (xs - 20) ** 2 < 500] = (170, 90, 150)
    rgb[(ys - 70) ** 2 + (xs - 90) ** 2 < 700] = (215, 190, 210)
    rgb[5:8, 60:110] = (30, 120, 40)  # green pen
    noisy = np.clip(rgb.astype(np.int16) + rng.integers(-12, 13, size=rgb.shape), 0, 255).astype(np.uint8)
    params = [TissueParams(mask_mpp=8.0, min_area_um2=3000.0), TissueParams(blur_px=3, close_px=2, pen_ink=())]
    fast = [find_tissue(noisy, p) for p in params]
    monkeypatch.setattr(tissue, "binary_closing_disk", _scipy_closing)
    monkeypatch.setattr(tissue, "fill_holes", ndimage.binary_fill_holes)
    for got, p in zip(fast, params):
        expected = find_tissue(noisy, p)
        assert got.threshold == expected.threshold
        np.testing.assert_array_equal(got.mask, expected.mask)
        np.testing.assert_array_equal(got.ink, expected.ink)
        assert expected.mask.any() and expected.ink.any() == bool(p.pen_ink)
