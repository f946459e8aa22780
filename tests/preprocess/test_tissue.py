"""Tissue masks and per-box tissue fractions."""

from __future__ import annotations

import numpy as np
import pytest

from medssl.preprocess.tissue import TissueParams, box_fractions, detect_tissue, saturation
from tests.layouts import LAYOUT


def test_saturation_matches_hsv_definition():
    rgb = np.array([[[255, 0, 0], [128, 128, 128], [0, 0, 0], [200, 100, 50]]], dtype=np.uint8)
    expected = np.array([[255, 0, 0, 255 * (200 - 50) / 200]])
    np.testing.assert_allclose(saturation(rgb), expected, rtol=1e-5)


def test_mask_follows_known_tissue_layout():
    mpp0, mask_mpp = 0.25, 8.0
    ds = mask_mpp / mpp0
    h, w = int(LAYOUT.height / ds), int(LAYOUT.width / ds)
    thumb = LAYOUT.render(0, 0, w, h, downsample=ds)
    mask, threshold = detect_tissue(thumb, TissueParams(mask_mpp=mask_mpp))
    ys, xs = np.mgrid[0:h, 0:w]
    truth = LAYOUT.tissue_at((xs + 0.5) * ds, (ys + 0.5) * ds)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95  # plain Otsu (no hysteresis) scores about 0.8 here: it cuts faint stroma
    assert threshold >= TissueParams().min_saturation


def test_blank_glass_has_no_tissue(rng):
    glass = np.clip(rng.normal(236, 2, size=(200, 300, 3)), 0, 255).astype(np.uint8)
    mask, _ = detect_tissue(glass, TissueParams())
    assert not mask.any()


def test_fixed_threshold_and_small_piece_removal():
    rgb = np.full((100, 100, 3), 240, dtype=np.uint8)
    rgb[10:60, 10:60] = (150, 80, 60)  # big stained piece
    rgb[80:83, 80:83] = (150, 80, 60)  # a speck of 3x3 px = 576 µm² at 8 µm/px
    params = TissueParams(saturation_threshold=40, blur_px=0, close_px=0, min_area_um2=1000)
    mask, threshold = detect_tissue(rgb, params)
    assert threshold == 40
    assert mask[10:60, 10:60].all() and mask.sum() == 2500


def test_box_fractions_equal_brute_force_supersampling(rng):
    mask = rng.random((20, 30)) > 0.6
    boxes = np.array([[0.0, 0.0, 30.0, 20.0], [2.5, 3.25, 9.75, 11.5], [28.0, 18.0, 30.0, 20.0], [4.0, 4.0, 5.0, 5.0]])
    got = box_fractions(mask, boxes)
    for box, value in zip(boxes, got):
        # Exact area by 1/8-pixel supersampling of the piecewise-constant mask (box edges are multiples of 1/8).
        xs = np.arange(box[0], box[2], 0.125) + 0.0625
        ys = np.arange(box[1], box[3], 0.125) + 0.0625
        sub = mask[np.floor(ys).astype(int)[:, None], np.floor(xs).astype(int)[None, :]]
        assert value == pytest.approx(sub.mean(), abs=1e-9)
