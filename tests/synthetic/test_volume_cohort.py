"""The mixed volume cohort (brain MRI with labels, nibabel's MRI, a CT phantom) and the random warp its
patients share with ``brain_cohort``."""

from __future__ import annotations

import csv

import numpy as np
import torch
from nibabel.nifti1 import Nifti1Image

from medssl.synthetic.volumes import SOURCES, grid_affine, random_warp, volume_cohort, warp_source_mm


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


def test_the_warp_field_is_where_the_warp_samples_the_template():
    """A template whose channels are its own world coordinates comes out of the warp as the field:
    each warped voxel shows the template position warp_source_mm says it does (where it is inside)."""
    affine = grid_affine((2.0, 3.0, 2.5), origin=(-10.0, 4.0, -7.0))
    template_shape = (12, 10, 14)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in template_shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    stack = torch.from_numpy(world.transpose(3, 0, 1, 2).astype(np.float32))[None]
    out_affine = grid_affine((3.0, 3.0, 3.0), origin=(-9.0, 5.0, -6.0))
    warp = dict(rotation_deg=8.0, scale=0.05, translation_mm=2.0, deformation_mm=1.0)
    warped = random_warp(stack, affine, (7, 8, 9), out_affine, np.random.default_rng(3), **warp)
    field = warp_source_mm(affine, template_shape, (7, 8, 9), out_affine, np.random.default_rng(3), **warp)
    voxel = (field - affine[:3, 3]) / np.diag(affine)[:3]
    inside = np.all((voxel >= 0) & (voxel <= np.array(template_shape) - 1), axis=-1)
    assert inside.mean() > 0.5  # the check covers most of the grid
    np.testing.assert_allclose(warped.transpose(1, 2, 3, 0)[inside], field[inside], atol=1e-3)
    # and the mapping is not the identity: the warp moved voxels by millimetres
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (7, 8, 9)], indexing="ij"), axis=-1)
    assert np.abs(field - (grid * 3.0 + out_affine[:3, 3])).max() > 1.0


def test_cohort_source_mm_gives_the_written_brains_their_labels(tmp_path):
    """The recomputed field of a written patient, applied to the MNI152 tissue maps (sampled here by
    SciPy, not by the cohort's code), gives the label file the cohort wrote for it (labels carry no
    scanner noise); another patient's field does not."""
    from scipy.ndimage import map_coordinates

    from medssl.synthetic.volumes import brain_cohort, brain_labels, cohort_source_mm, mni152_files

    brain_cohort(tmp_path, n=2, spacing=8.0, fractions={"train": 0.5, "test": 0.5}, seed=0)
    files = mni152_files()
    maps = {kind: Nifti1Image.from_filename(files[kind]) for kind in ("gm", "wm")}
    to_voxel = np.linalg.inv(np.asarray(maps["gm"].affine))
    written = {case: Nifti1Image.from_filename(tmp_path / f"{case}_seg.nii.gz") for case in ("brain-00", "brain-01")}
    agreement = {}
    for case in written:
        field, affine = cohort_source_mm(case, spacing=8.0, seed=0)
        np.testing.assert_allclose(affine, np.asarray(written[case].affine), atol=1e-5)
        voxels = (field @ to_voxel[:3, :3].T + to_voxel[:3, 3]).transpose(3, 0, 1, 2)
        grey, white = (map_coordinates(np.asarray(m.dataobj) / 255.0, voxels, order=1) for m in maps.values())
        labels = brain_labels(grey, white)
        agreement[case] = {other: (labels == np.asarray(w.dataobj)).mean() for other, w in written.items()}
    for case, other in (("brain-00", "brain-01"), ("brain-01", "brain-00")):
        assert agreement[case][case] > 0.999  # float32 vs float64 sampling could flip a voxel at exactly 0.5
        assert agreement[case][other] < 0.95
