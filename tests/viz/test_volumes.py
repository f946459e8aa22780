"""Volume pictures and tables: outlines against skimage, the physical aspect and the grey window by
hand."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

from medssl.preprocess.volumes import Plan, VolumeParams, normalize, ras_spacing
from medssl.viz.qc import volume_montage
from medssl.viz.volumes import (
    PALETTE,
    apply_normalization,
    intensity_histograms,
    label_centre,
    orthogonal_views,
    outline_colours,
    source_grid,
    spacing_table,
)


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


def test_label_centre_in_the_largest_part_and_inside_a_crescent():
    label = np.zeros((9, 20, 30), np.uint8)
    label[2:7, 5:16, 3:8] = 1  # a left "lung", 5 columns wide around x = 5
    label[2:7, 5:16, 21:28] = 2  # a larger right one, 7 wide around x = 24: all together centred at x = 16.08
    assert label_centre(label, inside=False) == (4, 10, 16)  # between the lungs, in neither
    assert label_centre(label) == (4, 10, 24)  # the centre of the largest part
    assert label_centre(label, value=1) == (4, 10, 5)
    crescent = np.zeros((5, 21, 21), bool)
    crescent[:, :, :] = (np.hypot(*np.mgrid[-10:11, -10:11]) <= 10)[None]
    crescent[:, 5:16, 5:21] = False  # bite out the right half's middle: the centre of mass (2, 10, 7.9) is bitten out
    z, y, x = label_centre(crescent)
    assert crescent[z, y, x] and (z, y) == (2, 10) and x == 4  # the nearest voxel still in the crescent
    with pytest.raises(ValueError, match="value 3"):
        label_centre(label, value=3)


#: array axis 0 runs posterior (−y) in 3 mm steps, axis 1 right (+x) in 0.8 mm, axis 2 superior in 2 mm
PERMUTED = np.array([[0.0, 0.8, 0.0, -10.0], [-3.0, 0.0, 0.0, 40.0], [0.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


@dataclass
class _Read:
    """A volume as a reader gives it: an affine and a (channel-first) shape."""

    affine: np.ndarray
    shape: tuple[int, ...]


def test_source_grid_puts_a_permuted_flipped_file_in_ras_order():
    grid = source_grid(PERMUTED, (1, 10, 20, 30))  # MONAI's channel-first [1, ...] shape
    assert grid["orientation"] == "PRS"
    assert grid["shape"] == (20, 10, 30)
    assert grid["spacing"] == (0.8, 3.0, 2.0)
    np.testing.assert_allclose(grid["spacing"], ras_spacing(SimpleNamespace(affine=PERMUTED)))  # cache-volumes'
    assert grid["extent"] == (16.0, 30.0, 60.0)


def test_spacing_table_rows_beside_the_cache_record():
    items = {"ct": {"modality": "CT", "shape": [12, 50, 40], "spacing": [1.75, 1.75, 3.0]}, "mr": {"shape": [1, 1, 1]}}
    source = _Read(PERMUTED, torch.Size([1, 10, 20, 30]))
    (row,) = spacing_table(items, {"ct": source})
    assert row["volume"] == "ct" and row["modality"] == "CT" and row["source orientation"] == "PRS"
    assert row["source shape (x, y, z)"] == (20, 10, 30) and row["source spacing mm"] == (0.8, 3.0, 2.0)
    assert row["cached shape (x, y, z)"] == (40, 50, 12) and row["cached spacing mm"] == (1.75, 1.75, 3.0)
    assert row["cached extent mm"] == (70.0, 87.5, 36.0)
    with pytest.raises(KeyError, match="'pet' is not in the cache"):
        spacing_table(items, {"pet": source})


@pytest.mark.parametrize(
    "modality, params", [("CT", VolumeParams()), ("CT", VolumeParams(ct_norm="window")), ("MR", VolumeParams())]
)
def test_apply_normalization_matches_cache_volumes(modality, params):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(100.0, 400.0, size=(1, 6, 7, 8)).round().astype(np.float32))
    image[0, 0] = 0.0  # zeros: kept by the MR z-score
    plan = Plan(spacing=(1.0, 1.0, 1.0), ct={"clip": [-200.0, 600.0], "mean": 150.0, "std": 250.0})
    expected, record = normalize(image.clone(), modality, params, plan, image != 0)  # MONAI's MR z-score is in place
    ours = apply_normalization(image.numpy(), record)
    np.testing.assert_allclose(ours, np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_intensity_histograms_fractions_and_marks():
    record = {"kind": "zscore-nonzero", "mean": 50.0, "std": 10.0}
    before = np.arange(1, 101, dtype=np.float32)
    result = intensity_histograms(before, (before - 50) / 10, record, bins=10)
    assert result["before"]["fraction"].tolist() == [0.1] * 10
    assert result["before"]["edges"][[0, -1]].tolist() == [1.0, 100.0]
    assert [(m["name"], m["before"], m["after"]) for m in result["marks"]] == [
        ("mean − 1 SD", 40.0, -1.0),
        ("mean", 50.0, 0.0),
        ("mean + 1 SD", 60.0, 1.0),
    ]
    ct = intensity_histograms(before, before, {"kind": "cohort-zscore", "clip": [10, 90], "mean": 30, "std": 20})
    assert [(m["before"], m["after"]) for m in ct["marks"]] == [(10, -1.0), (30, 0.0), (90, 3.0)]
    with pytest.raises(ValueError, match="unknown normalization kind 'minmax'"):
        intensity_histograms(before, before, {"kind": "minmax"})


def test_qc_volume_montage_is_the_three_views_at_one_height():
    image = np.zeros((5, 20, 30), np.float32)  # 20 × 20 × 30 mm with 4 mm slices
    image[1:4, 4:16, 4:26] = 1.0
    montage = np.asarray(volume_montage(image, image > 0, spacing=(1.0, 1.0, 4.0), side=60))
    # axial and coronal are 30 × 20 mm, the sagittal 20 × 20 mm: each panel's longest side is 60 px
    assert montage.shape == (60, 60 + 8 + 60 + 8 + 60, 3)
    assert (montage[40:, :60] == 0).all() and (montage[40:, 68:128] == 0).all()  # 40 px high, padded below
    assert (montage.reshape(-1, 3) == PALETTE[0]).all(axis=1).any()  # the label's outline, in red
