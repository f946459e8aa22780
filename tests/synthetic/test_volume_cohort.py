"""The mixed volume cohort (brain MRI with labels, nibabel's MRI, a CT phantom) and the random warp its
patients share with ``brain_cohort``."""

from __future__ import annotations

import csv

import numpy as np
import torch
from nibabel.nifti1 import Nifti1Image

from medssl.synthetic.volumes import SOURCES, grid_affine, random_warp, volume_cohort


def test_a_tiny_cohort_has_every_source_in_every_split_and_labels_only_for_brains(tmp_path):
    manifest = volume_cohort(tmp_path, n=2, spacing=8.0, fractions={"train": 0.5, "test": 0.5})
    rows = list(csv.DictReader(manifest.open()))
    assert sorted(r["volume_id"] for r in rows) == sorted(f"{s}-{k:02d}" for s in SOURCES for k in range(2))
    for source in SOURCES:
        mine = [r for r in rows if r["volume_id"].startswith(f"{source}-")]
        assert sorted(r["split"] for r in mine) == ["test", "train"]  # dealt by case within the source
        assert {r["modality"] for r in mine} == {"CT" if source == "ct" else "MR"}
        assert all(bool(r["label"]) == (source == "brain") for r in mine)
        assert all((manifest.parent / r["image"]).is_file() for r in mine)
    # the brain part stands alone too (the segmentation cache needs every volume labelled)
    assert len(list(csv.DictReader((tmp_path / "brain" / "cohort.csv").open()))) == 2
    # patients of one source differ (own warp and scanner); CT outside the phantom is air, not water
    first, second = (Nifti1Image.from_filename(tmp_path / f"ct-0{k}.nii.gz").get_fdata() for k in range(2))
    assert first.shape == second.shape and not np.allclose(first, second)
    assert first[0, 0].mean() < -900


def test_the_warp_without_any_strength_returns_the_template():
    stack = torch.rand(1, 2, 5, 6, 7)
    affine = grid_affine((2.0, 2.0, 2.0), origin=(-4.0, 3.0, 1.0))
    none = dict(rotation_deg=0.0, scale=0.0, translation_mm=0.0, deformation_mm=0.0)
    warped = random_warp(stack, affine, (5, 6, 7), affine, np.random.default_rng(0), **none)
    np.testing.assert_allclose(warped, stack[0].numpy(), atol=1e-5)
    # on a grid shifted by one voxel, the template comes out shifted by one voxel (zero outside)
    shifted = grid_affine((2.0, 2.0, 2.0), origin=(-2.0, 3.0, 1.0))
    moved = random_warp(stack, affine, (5, 6, 7), shifted, np.random.default_rng(0), **none)
    np.testing.assert_allclose(moved[:, :-1], stack[0, :, 1:].numpy(), atol=1e-5)
    np.testing.assert_allclose(moved[:, -1], 0.0, atol=1e-6)
