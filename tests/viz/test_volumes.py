"""Volume pictures and tables: outlines against skimage, the physical aspect and the grey window by
hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import find_boundaries

from medssl.viz.volumes import PALETTE, label_centre, orthogonal_views, outline_colours


def _blobs(shape=(6, 40, 36), seed: int = 0) -> np.ndarray:
    """An integer label volume with three touching regions of irregular shape (values 1, 2, 3)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1, 4, 4))
    return np.digitize(field, np.quantile(field, [0.4, 0.6, 0.8])).astype(np.uint8)


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are not grey (r = g = b): where an outline was drawn."""
    return ~((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]))


def _rim(mask: np.ndarray) -> np.ndarray:
    return mask & ~np.asarray(ndimage.binary_erosion(mask), dtype=bool)


def test_outlines_are_skimage_inner_boundaries_one_colour_per_value():
    label = _blobs()
    image = np.random.default_rng(1).normal(size=label.shape).astype(np.float32)
    at = (3, 20, 18)
    views = orthogonal_views(image, (1.0, 1.0, 1.0), {"organs": label}, at=at)
    planes = {"axial": label[3][::-1], "coronal": label[:, 20, :][::-1], "sagittal": label[:, :, 18][::-1]}
    for view, plane in planes.items():
        rgb = views[view]
        assert rgb.shape == (*plane.shape, 3) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(_coloured(rgb), find_boundaries(plane, mode="inner"))
        for value in (1, 2, 3):
            edge = find_boundaries(plane, mode="inner") & (plane == value)
            assert (rgb[edge] == PALETTE[value - 1]).all()


def test_bool_masks_one_colour_per_name_later_names_on_top():
    mask = np.zeros((3, 12, 12), bool)
    mask[:, 3:9, 3:9] = True
    inner = np.zeros_like(mask)
    inner[:, 3:6, 3:6] = True  # shares the square's top-left corner edges
    colours = outline_colours({"a": mask, "b": inner})
    assert colours == {"a": {1: PALETTE[0]}, "b": {1: PALETTE[1]}}
    axial = orthogonal_views(np.zeros(mask.shape), (1, 1, 1), {"a": mask, "b": inner}, at=(1, 0, 0), window=(0, 1))[
        "axial"
    ]
    square = np.zeros((12, 12), bool)
    square[3:9, 3:9] = True
    ring = _rim(square)  # the hand case: a 6×6 square's 1-pixel rim
    small = _rim(inner[1][::-1])
    assert (axial[small] == PALETTE[1]).all()
    assert (axial[ring[::-1] & ~small] == PALETTE[0]).all()
    assert not _coloured(axial)[~(ring[::-1] | small)].any()


def test_physical_aspect_a_cube_with_4mm_slices_is_a_square():
    # 20 mm on each side: 5 slices of 4 mm, 20 rows and columns of 1 mm; a bright 12 mm cube inside
    image = np.zeros((5, 20, 20), np.float32)
    image[1:4, 4:16, 4:16] = 1.0
    views = orthogonal_views(image, (4.0, 1.0, 1.0), window=(0.0, 1.0))
    for view in ("axial", "coronal", "sagittal"):
        rgb = views[view]
        assert rgb.shape == (20, 20, 3), view  # square pixels of 1 mm: the whole volume is 20 × 20
        rows, cols = np.nonzero(rgb[..., 0] == 255)
        assert np.ptp(rows) + 1 == 12 and np.ptp(cols) + 1 == 12, view  # the cube is a 12 × 12 mm square
    coarse = orthogonal_views(image, (4.0, 1.0, 1.0), window=(0.0, 1.0), mm_per_pixel=2.0)
    assert {v.shape for v in coarse.values()} == {(10, 10, 3)}


def test_window_maps_linearly_and_clips():
    image = np.array([-5.0, 0.0, 2.5, 6.0, 10.0, 20.0], np.float32).reshape(1, 1, 6)
    axial = orthogonal_views(image, (1, 1, 1), window=(0.0, 10.0))["axial"]
    assert axial[0, :, 0].tolist() == [0, 0, 64, 153, 255, 255]  # 2.5 → 63.75, 6 → 153
    assert (axial[..., 0] == axial[..., 2]).all()


def test_default_window_is_the_1st_to_99th_percentile():
    image = np.linspace(0.0, 100.0, 8 * 10 * 10, dtype=np.float32).reshape(8, 10, 10)
    lo, hi = np.percentile(image, [1, 99])
    ours = orthogonal_views(image, (1, 1, 1))
    theirs = orthogonal_views(image, (1, 1, 1), window=(lo, hi))
    for view in ours:
        np.testing.assert_array_equal(ours[view], theirs[view])


def test_orientation_anterior_and_superior_up():
    image = np.zeros((4, 6, 5), np.float32)
    image[:, -1, :] = 1.0  # the most anterior row (y = Y - 1)
    image[-1, :, :] = 1.0  # the most superior slice
    views = orthogonal_views(image, (1, 1, 1), at=(1, 2, 2), window=(0, 1))
    assert (views["axial"][0, :, 0] == 255).all() and (views["axial"][1:, :, 0] == 0).all()
    assert (views["coronal"][0, :, 0] == 255).all()
    assert (views["sagittal"][0, :, 0] == 255).all() and (views["sagittal"][:, -1, 0] == 255).all()


def test_bad_inputs_say_what_is_wrong():
    image = np.zeros((4, 5, 6))
    with pytest.raises(ValueError, match="at="):
        orthogonal_views(image, (1, 1, 1), at=(4, 0, 0))
    with pytest.raises(ValueError, match="spacing"):
        orthogonal_views(image, (1, 0, 1))
    with pytest.raises(ValueError, match="'seg' has shape"):
        orthogonal_views(image, (1, 1, 1), {"seg": np.zeros((4, 5, 5), bool)})
    with pytest.raises(ValueError, match="window"):
        orthogonal_views(image, (1, 1, 1), window=(1.0, 1.0))
    with pytest.raises(ValueError, match="bool or integer"):
        orthogonal_views(image, (1, 1, 1), {"seg": np.zeros((4, 5, 6), np.float32)})


def test_label_centre_snaps_into_the_label():
    label = np.zeros((9, 20, 30), np.uint8)
    label[2:7, 5:16, 3:8] = 1  # a left "lung", 5 columns wide around x = 5
    label[2:7, 5:16, 21:28] = 2  # a right one, 7 wide around x = 24: the centre of mass is at x = 16.08
    assert label_centre(label, inside=False) == (4, 10, 16)  # between the lungs, in neither
    assert label_centre(label) == (4, 10, 21)  # the nearest labelled voxel: the right lung's edge
    assert label_centre(label, value=2) == (4, 10, 24)
    with pytest.raises(ValueError, match="value 3"):
        label_centre(label, value=3)
