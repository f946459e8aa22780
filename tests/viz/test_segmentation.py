"""Segmentations read over their scans: NIfTI files in any orientation against nibabel's own canonical
reorientation, and the axial slices through a mask by hand."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medssl.errors import InputError
from medssl.viz.segmentation import read_nifti, slices_through, to_ras_zyx

# An oblique-free affine that permutes and flips the file's axes: i runs posterior (-y, 3 mm), j runs
# right→left (-x, 2 mm), k runs superior→inferior (-z, 4 mm), a "PLI"-like file as some scanners write.
PERMUTED = np.array(
    [
        [0.0, -2.0, 0.0, 40.0],
        [-3.0, 0.0, 0.0, 25.0],
        [0.0, 0.0, -4.0, 60.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _canonical_zyx(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """The reference: nibabel's as_closest_canonical, transposed to [Z, Y, X]."""
    image = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return np.asarray(image.dataobj).transpose(2, 1, 0), zooms[::-1]


def test_a_ras_file_is_only_transposed_and_its_spacing_reversed():
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # [X, Y, Z]
    volume, spacing = to_ras_zyx(data, np.diag([2.0, 3.0, 4.0, 1.0]))
    assert volume.shape == (6, 5, 4) and spacing == (4.0, 3.0, 2.0)
    assert volume[5, 1, 3] == data[3, 1, 5]


def test_a_left_right_flipped_file_comes_back_flipped_along_x():
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([-1.5, 1.5, 3.0, 1.0])  # LAS: i runs right → left
    volume, spacing = to_ras_zyx(data, affine)
    assert spacing == (3.0, 1.5, 1.5)
    np.testing.assert_array_equal(volume, data[::-1].transpose(2, 1, 0))


def test_permuted_and_flipped_axes_match_nibabel_canonical():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, size=(7, 5, 3)).astype(np.int16)
    volume, spacing = to_ras_zyx(data, PERMUTED)
    expected, zooms = _canonical_zyx(data, PERMUTED)
    np.testing.assert_array_equal(volume, expected)
    assert spacing == zooms == (4.0, 3.0, 2.0)  # z, y, x: k was 4 mm, i 3 mm along y, j 2 mm along x


def test_read_nifti_matches_nibabel_canonical_and_keeps_a_label_on_its_scan(tmp_path):
    rng = np.random.default_rng(1)
    scan = rng.normal(size=(7, 5, 3)).astype(np.float32)
    label = (scan > 0.5).astype(np.uint8)  # a label defined voxel by voxel on the scan's grid
    nib.save(nib.Nifti1Image(scan, PERMUTED), tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(label, PERMUTED), tmp_path / "label.nii.gz")
    image, spacing = read_nifti(tmp_path / "scan.nii.gz")
    mask, mask_spacing = read_nifti(tmp_path / "label.nii.gz")
    np.testing.assert_array_equal(image, _canonical_zyx(scan, PERMUTED)[0])
    assert spacing == mask_spacing == (4.0, 3.0, 2.0)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, (image > 0.5).astype(np.uint8))  # still voxel for voxel


def test_read_nifti_takes_a_single_frame_4d_file(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "one_frame.nii")
    volume, _ = read_nifti(tmp_path / "one_frame.nii")
    np.testing.assert_array_equal(volume, data[..., 0].transpose(2, 1, 0))


def test_read_nifti_names_the_file_it_cannot_read(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.nii.gz").write_text("not a volume")
    with pytest.raises(InputError, match="notes.nii.gz: not a readable NIfTI file"):
        read_nifti(tmp_path / "notes.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 2), np.int16), np.eye(4)), tmp_path / "series.nii")
    with pytest.raises(InputError, match=r"series.nii: expected a 3D volume, got shape \(2, 3, 4, 2\)"):
        read_nifti(tmp_path / "series.nii")


def test_slices_through_spread_from_the_first_to_the_last_filled_slice():
    mask = np.zeros((12, 4, 4), dtype=bool)
    mask[2:9, 1, 1] = True  # slices 2 … 8
    assert slices_through(mask, 3) == [2, 5, 8]
    assert slices_through(mask, 1) == [5]
    assert slices_through(mask, 4) == [2, 4, 6, 8]  # 2, 4, 6, 8 exactly
    mask[:] = False
    mask[6, 0, 0] = True
    assert slices_through(mask, 3) == [6]  # one slice: nothing else to show
    with pytest.raises(ValueError, match="no nonzero voxel"):
        slices_through(np.zeros((3, 2, 2)), 3)
    with pytest.raises(ValueError, match="n must be at least 1"):
        slices_through(mask, 0)
