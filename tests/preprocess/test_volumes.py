"""`medssl cache-volumes`: geometry kept through resampling, real MRI, 4D, DICOM, bad inputs, resume."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssl.cache import VolumeCache
from medssl.cli import main as cli
from medssl.errors import CacheError
from medssl.preprocess import VolumeParams, cache_volumes
from medssl.preprocess.volumes import ct_statistics, target_spacing
from medssl.synthetic.volumes import (
    ct_phantom,
    dicom_ras_affine,
    grid_affine,
    nibabel_data,
    sphere,
    write_dicom_series,
    write_nifti,
)
from tests.manifests import manifest_rows

CENTER, RADIUS = (3.0, -2.0, 5.0), 15.0


def run(inputs, out, **kwargs):
    kwargs.setdefault("progress", False)
    return cache_volumes([str(p) for p in inputs], out, **kwargs)


@pytest.fixture(scope="module")
def sphere_case(tmp_path_factory) -> Path:
    """An anisotropic (1 × 1 × 3 mm), LAS-oriented MR-like volume with a 15 mm sphere and its label."""
    folder = tmp_path_factory.mktemp("sphere")
    affine = grid_affine((1.0, 1.0, 3.0), origin=(45.0, -42.0, -55.0), flip_x=True)
    image, label = sphere((90, 84, 40), affine, CENTER, RADIUS, body_radius_mm=32.0)
    write_nifti(folder / "ball.nii.gz", image, affine)
    write_nifti(folder / "ball_seg.nii.gz", label, affine)
    (folder / "cohort.csv").write_text("volume_id,image,label,modality\nball,ball.nii.gz,ball_seg.nii.gz,MR\n")
    return folder


def world_centroid(mask_zyx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    zyx = np.argwhere(mask_zyx).mean(axis=0)
    xyz = zyx[::-1]
    return np.asarray(affine)[:3, :3] @ xyz + np.asarray(affine)[:3, 3]


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (0.8, 0.8, 0.8)])
def test_sphere_keeps_its_physical_radius_and_label_alignment(sphere_case, tmp_path, spacing):
    summary = run([sphere_case / "cohort.csv"], tmp_path / "c", params=VolumeParams(spacing=spacing))
    assert not summary.failed, summary.failed
    cache = VolumeCache(tmp_path / "c")
    meta = cache.metadata("ball")
    assert meta["spacing"] == list(spacing) and meta["axes"] == "zyx"
    label = np.asarray(cache.label("ball"))
    voxel_mm3 = float(np.prod(spacing))
    radius = (3 * label.sum() * voxel_mm3 / (4 * np.pi)) ** (1 / 3)
    assert radius == pytest.approx(RADIUS, rel=0.03)
    # The label sits where the sphere is in the world, and where the image is bright.
    np.testing.assert_allclose(world_centroid(label > 0, meta["affine"]), CENTER, atol=1.0)
    image = np.asarray(cache.image("ball"), dtype=np.float32)
    bright = image > (image[label > 0].mean() + image[(label == 0) & (image != 0)].mean()) / 2
    dice = 2 * (bright & (label > 0)).sum() / (bright.sum() + (label > 0).sum())
    assert dice > 0.9
    # MR: z-scored inside the non-zero foreground, background stays 0.
    foreground = image != 0
    assert abs(image[foreground].mean()) < 0.05 and image[foreground].std() == pytest.approx(1.0, abs=0.05)


def test_real_mri_matches_nibabel_canonical_orientation(tmp_path):
    """anatomical.nii (LAS, 2 mm) through MONAI's chain equals nibabel's own RAS reorientation."""
    params = VolumeParams(spacing=(2.0, 2.0, 2.0), crop_foreground=False, dtype="float32")
    summary = run([nibabel_data("anatomical.nii")], tmp_path / "c", params=params, modality="MR")
    assert not summary.failed, summary.failed
    cache = VolumeCache(tmp_path / "c")
    stats = cache.metadata("anatomical")["normalization"]
    canonical = nib.as_closest_canonical(nib.load(nibabel_data("anatomical.nii"))).get_fdata()
    expected = np.where(canonical != 0, (canonical - stats["mean"]) / stats["std"], 0.0)
    got = np.asarray(cache.image("anatomical")).transpose(2, 1, 0)  # [Z, Y, X] -> [X, Y, Z]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    nonzero = canonical[canonical != 0]
    assert stats["mean"] == pytest.approx(nonzero.mean(), rel=1e-4)
    assert stats["std"] == pytest.approx(nonzero.std(), rel=1e-3)


def test_4d_volume_needs_a_frame_and_gets_the_right_one(tmp_path):
    four_d = nibabel_data("example4d.nii.gz")
    failed = run([four_d], tmp_path / "a", modality="MR", params=VolumeParams(spacing=(2.0, 2.0, 2.2)))
    assert "is 4D (128, 96, 24, 2)" in failed.results[0].reason and "--frame" in failed.results[0].reason
    params = VolumeParams(spacing=(2.0, 2.0, 2.2), frame=1, crop_foreground=False, dtype="float32")
    done = run([four_d], tmp_path / "b", modality="MR", params=params)
    assert not done.failed, done.failed
    cache = VolumeCache(tmp_path / "b")
    stats = cache.metadata("example4d")["normalization"]
    image = nib.load(four_d)
    frame = nib.Nifti1Image(np.asarray(image.dataobj)[..., 1].astype(np.float32), image.affine)
    canonical = nib.as_closest_canonical(frame).get_fdata()
    nonzero = canonical != 0
    assert stats["mean"] == pytest.approx(canonical[nonzero].mean(), rel=1e-3)


def test_dicom_series_and_nifti_of_the_same_scan_give_the_same_cache(tmp_path):
    volume = ct_phantom((48, 40, 10))
    spacing, origin = (0.9, 0.9, 2.5), (-20.0, -18.0, 7.5)
    write_dicom_series(tmp_path / "in" / "series-1", volume, spacing, origin)
    write_nifti(tmp_path / "in" / "nifti-1.nii.gz", np.round(volume), dicom_ras_affine(spacing, origin))
    summary = run([tmp_path / "in"], tmp_path / "c", modality="CT", params=VolumeParams(dtype="float32"))
    assert not summary.failed, summary.failed
    cache = VolumeCache(tmp_path / "c")
    assert cache.ids == ["nifti-1", "series-1"]
    np.testing.assert_allclose(cache.metadata("series-1")["affine"], cache.metadata("nifti-1")["affine"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(cache.image("series-1")), np.asarray(cache.image("nifti-1")), atol=1e-4)
    assert summary.plan.spacing == pytest.approx(spacing)


def test_ct_normalisation_cohort_and_window(tmp_path):
    affine = grid_affine((1.0, 1.0, 2.0))
    write_nifti(tmp_path / "in" / "ct.nii.gz", ct_phantom((40, 40, 6)), affine)
    cohort = run([tmp_path / "in"], tmp_path / "a", modality="CT", params=VolumeParams(dtype="float32"))
    ct = cohort.plan.ct
    stats = VolumeCache(tmp_path / "a").metadata("ct")["normalization"]
    assert stats["kind"] == "cohort-zscore" and stats["clip"] == ct["clip"]
    image = np.asarray(VolumeCache(tmp_path / "a").image("ct"))
    lo, hi = ct["clip"]
    assert image.min() >= (lo - ct["mean"]) / ct["std"] - 1e-4 and image.max() <= (hi - ct["mean"]) / ct["std"] + 1e-4
    window = run(
        [tmp_path / "in"],
        tmp_path / "b",
        modality="CT",
        params=VolumeParams(ct_norm="window", ct_window=(-100.0, 100.0)),
    )
    assert not window.failed
    image = np.asarray(VolumeCache(tmp_path / "b").image("ct"), dtype=np.float32)
    assert image.min() == 0.0 and image.max() == 1.0
    # Soft tissue (40 HU ± noise) lands at (40 + 100) / 200 = 0.7 in a -100..100 window.
    assert np.median(image[(image > 0.5) & (image < 0.9)]) == pytest.approx(0.7, abs=0.02)


def test_target_spacing_follows_the_anisotropy_rule():
    # Isotropic-ish cohort: the median per axis.
    assert target_spacing([[1, 1, 1], [0.8, 0.8, 1.2], [1.2, 1.2, 2]], [[200] * 3] * 3) == (1.0, 1.0, 1.2)
    # Thick slices on few voxels: z takes its 10th percentile instead of the median (5 mm).
    spacings = [[0.7, 0.7, 5.0], [0.8, 0.8, 5.0], [0.75, 0.75, 3.0], [0.7, 0.7, 6.0]]
    shapes = [[512, 512, 40]] * 4
    x, y, z = target_spacing(spacings, shapes)
    assert (x, y) == (0.725, 0.725)
    assert z == pytest.approx(np.percentile([5.0, 5.0, 3.0, 6.0], 10))


def test_ct_statistics_by_hand():
    stats = ct_statistics([np.arange(0, 100, dtype=float), np.arange(100, 201, dtype=float)])
    values = np.arange(0, 201, dtype=float)
    assert stats["mean"] == pytest.approx(100.0) and stats["std"] == pytest.approx(values.std())
    assert stats["clip"] == pytest.approx(list(np.percentile(values, [0.5, 99.5])))


def test_bad_inputs_are_reported_and_the_rest_finish(sphere_case, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = (sphere_case / "ball.nii.gz").read_bytes()
    (folder / "good.nii.gz").write_bytes(good)
    (folder / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    (folder / "text.nii").write_text("not a volume\n")
    image = nib.load(sphere_case / "ball.nii.gz")
    data = np.asarray(image.dataobj).copy()
    data[3, 3, 3] = np.nan
    write_nifti(folder / "nan.nii.gz", data, image.affine)
    write_nifti(folder / "empty.nii.gz", np.zeros((20, 20, 10), np.float32), image.affine)
    label = nib.load(sphere_case / "ball_seg.nii.gz")
    write_nifti(tmp_path / "labels" / "small.nii.gz", np.asarray(label.dataobj)[:-2], label.affine)
    write_nifti(tmp_path / "labels" / "moved.nii.gz", np.asarray(label.dataobj), label.affine + _shift(5.0))
    csv_path = tmp_path / "cohort.csv"
    csv_path.write_text(
        "volume_id,image,label,modality\n"
        f"shape-mismatch,{folder / 'good.nii.gz'},labels/small.nii.gz,MR\n"
        f"affine-mismatch,{folder / 'good.nii.gz'},labels/moved.nii.gz,MR\n"
        f"missing,{folder / 'missing.nii.gz'},,MR\n"
    )
    out = tmp_path / "c"
    code = cli(
        [
            "cache-volumes",
            str(folder),
            str(csv_path),
            "--out",
            str(out),
            "--modality",
            "MR",
            "--spacing",
            "2",
            "2",
            "2",
            "--quiet",
        ]
    )
    assert code == 1
    rows = manifest_rows(out / "manifest.csv")
    assert rows["good"]["status"] == "done"
    expected = {
        "truncated": "unreadable image",
        "text": "unreadable image",
        "nan": "1 NaN/Inf voxels",
        "empty": "empty foreground",
        "shape-mismatch": "does not match image",
        "affine-mismatch": "label affine does not match",
        "missing": "image file not found",
    }
    for volume_id, reason in expected.items():
        assert rows[volume_id]["status"] == "failed", volume_id
        assert reason in rows[volume_id]["reason"], rows[volume_id]["reason"]
    assert VolumeCache(out).ids == ["good"]


def _shift(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift


def test_resume_refusal_and_changed_label(sphere_case, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ball.nii.gz", "ball_seg.nii.gz", "cohort.csv"):
        (folder / name).write_bytes((sphere_case / name).read_bytes())
    params = VolumeParams(spacing=(2.0, 2.0, 2.0))
    assert [r.status for r in run([folder / "cohort.csv"], tmp_path / "c", params=params).results] == ["done"]
    assert [r.status for r in run([folder / "cohort.csv"], tmp_path / "c", params=params).results] == ["skipped"]
    with pytest.raises(CacheError, match=r"spacing: \[2\.0, 2\.0, 2\.0\] -> \[3\.0, 3\.0, 3\.0\]"):
        run([folder / "cohort.csv"], tmp_path / "c", params=VolumeParams(spacing=(3.0, 3.0, 3.0)))
    # A new label file is a new source: the volume is redone.
    label = nib.load(folder / "ball_seg.nii.gz")
    write_nifti(folder / "ball_seg.nii.gz", (np.asarray(label.dataobj) * 2).astype(np.uint8), label.affine)
    again = run([folder / "cohort.csv"], tmp_path / "c", params=params)
    assert [r.status for r in again.results] == ["done"]
    assert VolumeCache(tmp_path / "c").metadata("ball")["labels"] == [0, 2]
    rebuilt = run([folder / "cohort.csv"], tmp_path / "c", params=VolumeParams(spacing=(3.0, 3.0, 3.0)), overwrite=True)
    assert [r.status for r in rebuilt.results] == ["done"]
    assert VolumeCache(tmp_path / "c").metadata("ball")["spacing"] == [3.0, 3.0, 3.0]


def test_shards_share_one_cohort_plan(sphere_case, tmp_path):
    inputs = [sphere_case / "ball.nii.gz", nibabel_data("anatomical.nii")]
    plans = [run(inputs, tmp_path / "c", modality="MR", shard=(i, 2)).plan for i in range(2)]
    assert plans[0].spacing == plans[1].spacing
    assert VolumeCache(tmp_path / "c").ids == ["anatomical", "ball"]


def test_reader_slices_patches_and_memmap(sphere_case, tmp_path):
    params = VolumeParams(spacing=(2.0, 2.0, 2.0), dtype="float32")
    run([sphere_case / "cohort.csv"], tmp_path / "raw", params=params)
    run(
        [sphere_case / "cohort.csv"],
        tmp_path / "zstd",
        params=VolumeParams(spacing=(2.0, 2.0, 2.0), dtype="float32", codec="zstd"),
    )
    raw, packed = VolumeCache(tmp_path / "raw"), VolumeCache(tmp_path / "zstd")
    assert isinstance(raw.image("ball"), np.memmap) and not isinstance(packed.image("ball"), np.memmap)
    np.testing.assert_array_equal(np.asarray(raw.image("ball")), packed.image("ball")[:])
    z, y, x = raw.shape("ball")
    np.testing.assert_array_equal(raw.slice("ball", z // 2), packed.slice("ball", z // 2))
    np.testing.assert_array_equal(
        raw.patch("ball", (1, 2, 3), (8, 9, 10)), np.asarray(raw.image("ball"))[1:9, 2:11, 3:13]
    )
    np.testing.assert_array_equal(raw.slice("ball", 5, key="label"), np.asarray(packed.label("ball"))[5])
    png = tmp_path / "raw" / "qc" / "ball.png"
    assert png.stat().st_size > 500


def test_gzip_is_really_truncated_in_the_bad_input_test(sphere_case):
    """Guard for the test above: half a .nii.gz must not decompress."""
    data = (sphere_case / "ball.nii.gz").read_bytes()
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(data[: len(data) // 2])


def test_worker_processes_give_the_same_cache(sphere_case, tmp_path):
    inputs = [sphere_case / "ball.nii.gz", nibabel_data("anatomical.nii")]
    params = VolumeParams(spacing=(2.0, 2.0, 2.0))
    run(inputs, tmp_path / "one", modality="MR", params=params)
    run(inputs, tmp_path / "two", modality="MR", params=params, workers=2)
    one, two = VolumeCache(tmp_path / "one"), VolumeCache(tmp_path / "two")
    assert one.ids == two.ids == ["anatomical", "ball"]
    for volume_id in one.ids:
        np.testing.assert_array_equal(np.asarray(one.image(volume_id)), np.asarray(two.image(volume_id)))
