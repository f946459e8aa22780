"""Lesion masks resampled onto thumbnails and pictures, and heatmaps with the lesion outline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medssl.viz.heatmaps import (
    OUTLINE,
    edge,
    heatmap_overlay,
    mask_on_thumbnail,
    normalise,
    slide_heatmap,
    write_heatmap,
)


def block_mean(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape
    return image.reshape(h // side, side, w // side, side).mean(axis=(1, 3))


def level0(mask: np.ndarray, factor: int) -> np.ndarray:
    """A mask at 1/factor of level 0 blown up to level-0 pixels: the independent reference."""
    return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1).astype(np.float64)


META = {"dimensions": [480, 384], "mpp": 0.25, "thumbnail_mpp": 8.0}  # 32 level-0 pixels per thumbnail pixel


def test_mask_on_thumbnail_is_the_exact_area_share_whatever_the_two_scales():
    mask = np.random.default_rng(0).random((32, 40)) > 0.6  # 1/12 of level 0: 2.67 mask pixels per thumbnail pixel
    reference = block_mean(level0(mask, 12), 32)  # [12, 15], the thumbnail's grid
    np.testing.assert_allclose(mask_on_thumbnail(mask, META, (12, 15, 3)), reference, atol=1e-12)
    # a zoomed picture of the thumbnail: 24 level-0 pixels per pixel
    zoomed = mask_on_thumbnail(mask, META, (12, 15, 3), shape=(16, 20))
    np.testing.assert_allclose(zoomed, block_mean(level0(mask, 12), 24), atol=1e-12)


def test_mask_on_thumbnail_counts_thumbnail_pixels_past_the_slide_edge_as_outside():
    meta = {"dimensions": [470, 380], "mpp": 0.25, "thumbnail_mpp": 8.0}  # its 15 × 12 px thumbnail: 480 × 384
    mask = np.random.default_rng(1).random((38, 47)) > 0.5  # 1/10 of level 0
    padded = np.zeros((384, 480))
    padded[:380, :470] = level0(mask, 10)
    np.testing.assert_allclose(mask_on_thumbnail(mask, meta, (12, 15)), block_mean(padded, 32), atol=1e-12)


def test_mask_on_thumbnail_by_hand_and_bad_masks():
    meta = {"dimensions": [64, 64], "mpp": 1.0, "thumbnail_mpp": 16.0}  # 4×4 thumbnail
    mask = np.zeros((8, 8), bool)  # 8 level-0 pixels per mask pixel: half a thumbnail pixel
    mask[2:6, 3:5] = True  # level-0 rows 16-48, columns 24-40
    share = mask_on_thumbnail(mask, meta, (4, 4))
    np.testing.assert_allclose(share[1:3, 1], 0.5)  # column 1 is level-0 16-32: half of it lesion
    np.testing.assert_allclose(share[1:3, 2], 0.5)
    assert share[0].sum() == 0 and share[:, 0].sum() == 0 and share[:, 3].sum() == 0
    with pytest.raises(ValueError, match="2-D"):
        mask_on_thumbnail(np.zeros((0, 4)), meta, (4, 4))


def test_edge_is_the_inner_border_of_the_mask():
    mask = np.zeros((8, 8), bool)
    mask[2:7, 1:6] = True
    one = edge(mask, (8, 8), width=1) > 0
    expected = mask.copy()
    expected[3:6, 2:5] = False
    np.testing.assert_array_equal(one, expected)
    two = edge(mask, (8, 8), width=2) > 0
    assert two[3, 2] and not two[4, 3]  # only the centre pixel is more than 2 pixels in
    # on another grid: resized nearest first
    np.testing.assert_array_equal(edge(mask, (16, 16), width=2) > 0, np.kron(one, np.ones((2, 2))) > 0)


class FakeCache:
    """What slide_heatmap reads of a SlideCache: one 20×20 thumbnail of a 640×640 slide, 4 tiles."""

    def __init__(self):
        self.meta = {"dimensions": [640, 640], "mpp": 0.25, "thumbnail_mpp": 8.0, "tile_size_level0": 160.0}

    def metadata(self, slide_id):
        return self.meta

    def thumbnail(self, slide_id):
        return np.full((20, 20, 3), 230, np.uint8)

    def coords(self, slide_id):
        return np.array([[0, 0], [160, 0], [0, 160], [160, 160]])


def test_slide_heatmap_draws_the_lesion_outline_where_the_mask_is():
    mask = np.zeros((40, 40), bool)  # 1/16 of level 0
    mask[10:30, 10:30] = True  # level-0 160-480: thumbnail 5-15, picture 50-150 at zoom 10
    image = np.asarray(slide_heatmap(FakeCache(), "s", None, mask=mask, longest_side=200))
    assert image.shape == (228, 200, 3)  # the picture and the (empty) bar below it
    black = (image[:200] == OUTLINE).all(axis=2)
    rows, cols = np.nonzero(black)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (50, 149, 50, 149)
    assert black[100, 50] and black[100, 51] and not black[100, 52]  # 2 pixels wide, inside the lesion
    assert not black[100, 100]


def test_slide_heatmap_colours_scored_tiles_only_and_write_heatmap_saves_it(tmp_path):
    cache = FakeCache()
    scores = np.array([0.0, 1.0, np.nan, 0.5])
    image = np.asarray(slide_heatmap(cache, "s", scores, longest_side=200))
    cold = image[25, 25].astype(int)  # tile 0 covers the picture's pixels 0-50
    assert cold[2] > cold[0]  # blue
    assert image[25, 75, 0] > image[25, 75, 2]  # tile 1 red
    np.testing.assert_array_equal(image[75, 25], [230, 230, 230])  # tile 2 unscored: bare thumbnail
    path = write_heatmap(cache, "s", scores, tmp_path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(slide_heatmap(cache, "s", scores)))
    with pytest.raises(ValueError, match="3 scores for 4 tiles"):
        slide_heatmap(cache, "s", scores[:3])


def test_heatmap_overlay_stretches_over_scored_tiles_only():
    thumbnail = np.full((10, 30, 3), 230, np.uint8)
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10]])
    values, low, high = normalise(np.array([2.0, np.nan, 4.0]), stretch=True)
    assert (low, high) == (2.0, 4.0) and np.isnan(values[1])
    image = np.asarray(heatmap_overlay(thumbnail, boxes, values, longest_side=30))
    np.testing.assert_array_equal(image[5, 15], [230, 230, 230])
