"""`medssl cache-volumes` on DICOM as a PACS exports it: modality from the tags, folders mixing series and
non-image objects, single slices, and SEG / RT Structure Set labels drawn onto the image grid."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import cast

import numpy as np
import pydicom
import pytest
from monai.data.meta_tensor import MetaTensor

from medssl.cache import VolumeCache
from medssl.cli import main as cli
from medssl.preprocess import VolumeParams, cache_volumes
from medssl.preprocess.dicom import DicomSeries, scan_series
from medssl.preprocess.dicom_labels import dicom_label, parse_label_map, rasterise_contours
from medssl.preprocess.volume_geometry import original_geometry, to_original_grid
from medssl.preprocess.volumes import VolumeError, load_volume
from medssl.synthetic.dicom_objects import read_series, write_rtdose, write_rtstruct, write_seg
from medssl.synthetic.volumes import ct_phantom, grid_affine, write_dicom_series, write_nifti
from tests.manifests import manifest_rows

SHAPE = (16, 16, 6)  # columns (x), rows (y), slices (z)
SPACING, ORIGIN = (1.0, 1.0, 2.0), (-5.0, -6.0, 7.0)  # mm; the first voxel's ImagePositionPatient (LPS)
NATIVE = VolumeParams(spacing=SPACING, crop_foreground=False, dtype="float32")


def run(inputs, out, **kwargs):
    kwargs.setdefault("progress", False)
    return cache_volumes([str(p) for p in inputs], out, **kwargs)


def mr_like(shape=SHAPE) -> np.ndarray:
    """A positive MR-like volume (a brighter block in a body) so the non-zero z-score has a foreground."""
    volume = np.full(shape, 100.0, dtype=np.float32)
    volume[4:12, 4:12] = 300.0
    return volume


def test_modality_comes_from_the_tags_and_a_nifti_without_one_fails_alone(tmp_path):
    write_dicom_series(tmp_path / "in" / "mr-series", mr_like(), SPACING, ORIGIN, modality="MR")
    nifti = write_nifti(tmp_path / "in" / "anonymous.nii.gz", mr_like((10, 10, 4)), grid_affine((3.0, 3.0, 3.0)))
    summary = run([tmp_path / "in"], tmp_path / "c", params=VolumeParams(crop_foreground=False))
    rows = manifest_rows(summary)
    assert rows["mr-series"]["status"] == "done" and rows["mr-series"]["modality"] == "MR"
    meta = VolumeCache(tmp_path / "c").metadata("mr-series")
    assert meta["modality"] == "MR" and meta["normalization"]["kind"] == "zscore-nonzero"
    assert rows["anonymous"]["status"] == "failed"
    assert str(nifti) in rows["anonymous"]["reason"] and "--modality" in rows["anonymous"]["reason"]
    # The plan is the MR series' alone: with the 3 mm NIfTI the median of two would be 2 mm / 2.5 mm.
    assert summary.plan.spacing == pytest.approx(SPACING)

    # A given modality that contradicts the tag refuses that item only, naming both.
    manifest = tmp_path / "conflict.csv"
    manifest.write_text("volume_id,image,modality\nsaid-ct,in/mr-series,CT\nsaid-nothing,in/mr-series,\n")
    conflict = manifest_rows(run([manifest], tmp_path / "d", params=NATIVE))
    assert conflict["said-nothing"]["status"] == "done"
    assert conflict["said-ct"]["status"] == "failed"
    assert "Modality tag says MR" in conflict["said-ct"]["reason"] and "says CT" in conflict["said-ct"]["reason"]


def test_pacs_folder_is_split_by_series_and_non_images_stay_out_of_the_plan(tmp_path, capsys):
    study = tmp_path / "study"
    write_dicom_series(study, ct_phantom((16, 16, 6)), (1.0, 1.0, 2.0), ORIGIN, prefix="a", series_number=2)
    write_dicom_series(study, ct_phantom((16, 16, 4), seed=1), (1.0, 1.0, 3.0), ORIGIN, prefix="b", series_number=3)
    write_dicom_series(study, ct_phantom((16, 16, 1)), (0.5, 0.5, 5.0), ORIGIN, prefix="scout", series_number=1)
    first = read_series(study)[0]
    write_rtdose(study / "dose.dcm", first, spacing=(4.0, 4.0, 4.0), origin=ORIGIN)
    named = shutil.copy(study / "dose.dcm", tmp_path / "named-dose.dcm")
    assert len(scan_series(sorted(study.iterdir()))) == 4
    # A series with a slice missing, and a localiser whose images lie in three planes.
    gappy = write_dicom_series(tmp_path / "gappy", ct_phantom((16, 16, 6)), (1.0, 1.0, 2.0), ORIGIN)
    (gappy / "slice-0003.dcm").unlink()
    localiser = write_dicom_series(tmp_path / "localiser", ct_phantom((16, 16, 3)), (1.0, 1.0, 2.0), ORIGIN)
    for path, orientation in zip(
        sorted(localiser.iterdir()), ([1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])
    ):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = orientation
        ds.save_as(path)

    inputs = [str(p) for p in (study, named, gappy, localiser)]
    code = cli(["cache-volumes", *inputs, "--out", str(tmp_path / "c"), "--quiet"])
    printed = capsys.readouterr()
    assert code == 1 and "2 cached, 0 already complete, 3 skipped, 2 failed" in printed.out
    assert "skipped study-CT1: " in printed.err and "failed named-dose: " in printed.err
    rows = manifest_rows(tmp_path / "c" / "manifest.csv")
    assert rows["study-CT2"]["status"] == rows["study-CT3"]["status"] == "done"
    cache = VolumeCache(tmp_path / "c")
    assert cache.metadata("study-CT2")["original"]["shape"] == [16, 16, 6]
    assert cache.metadata("study-CT3")["original"]["shape"] == [16, 16, 4]
    assert rows["study-CT1"]["status"] == "skipped" and "single-slice series" in rows["study-CT1"]["reason"]
    (dose_id,) = [i for i in rows if i.startswith("study-RTDOSE")]
    assert rows[dose_id]["status"] == "skipped"
    assert "RT Dose Storage is not an image" in rows[dose_id]["reason"]
    # Named as an input, the same object is a failure that says why.
    assert rows["named-dose"]["status"] == "failed"
    assert rows["named-dose"]["reason"].startswith(f"{named}: RT Dose Storage is not an image")
    assert rows["gappy"]["status"] == "failed" and "unevenly spaced (2 to 4 mm apart" in rows["gappy"]["reason"]
    assert rows["localiser"]["status"] == "skipped" and "3 different orientations" in rows["localiser"]["reason"]
    # Median of the two CT series only: the dose grid (4 mm) or the scout (0.5 mm) would move it.
    assert cache.params["plan"]["spacing"] == pytest.approx([1.0, 1.0, 2.5])
    assert cache.ids == ["study-CT2", "study-CT3"]

    # Asked for, a single slice is cached as a one-slice volume.
    scout = tmp_path / "scout"
    write_dicom_series(scout, ct_phantom((16, 16, 1)), (0.5, 0.5, 5.0), ORIGIN)
    single = run([scout], tmp_path / "s", params=VolumeParams(allow_single_slice=True, spacing=(0.5, 0.5, 1.0)))
    assert [r.status for r in single.results] == ["done"]
    assert VolumeCache(tmp_path / "s").shape("scout")[0] == 1


# -- labels ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A CT series with a SEG (a cuboid and a core inside it), an RT Structure Set (a square on three
    slices, a hole in the middle one), and labels of another series."""
    folder = tmp_path_factory.mktemp("labelled")
    write_dicom_series(folder / "ct", ct_phantom(SHAPE), SPACING, ORIGIN)
    write_dicom_series(folder / "other", ct_phantom(SHAPE, seed=3), SPACING, ORIGIN)
    series = read_series(folder / "ct")
    box = np.zeros((6, 16, 16), dtype=bool)  # [frames, rows, columns] in the order of the series' files
    box[1:4, 3:9, 5:12] = True
    core = np.zeros_like(box)
    core[2, 5:7, 7:10] = True
    write_seg(folder / "seg.dcm", series, {"Box": box, "Core": core})
    write_seg(folder / "seg-other.dcm", read_series(folder / "other"), {"Box": box})
    write_rtstruct(folder / "rtstruct.dcm", series, {"GTV": SQUARE_ON_THREE_SLICES})
    write_rtstruct(folder / "rt-other.dcm", series, {"GTV": SQUARE_ON_THREE_SLICES}, referenced_series_uid="1.2.3.4")
    return folder


def _square(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


def _voxel_square(columns: tuple[int, int], rows: tuple[int, int], k: int) -> np.ndarray:
    """A square contour in patient coordinates (LPS mm) with vertices on these voxel centres of the test
    series (identity orientation) on slice ``k``."""
    x = [ORIGIN[0] + c * SPACING[0] for c in columns]
    y = [ORIGIN[1] + r * SPACING[1] for r in rows]
    return _square(x[0], x[1], y[0], y[1], ORIGIN[2] + k * SPACING[2])


# Columns 3..8 and rows 4..10 on slices 1, 2, 3; a hole, columns 5..6 and rows 6..8, on slice 2.
SQUARE_ON_THREE_SLICES = [_voxel_square((3, 8), (4, 10), k) for k in (1, 2, 3)] + [_voxel_square((5, 6), (6, 8), 2)]


def expected_square() -> np.ndarray:
    """By hand, in MONAI's [X (column), Y (row), Z (slice)] layout: a voxel whose centre is inside the
    contour or on it is in; the inner contour cuts a hole (its boundary centres go with the hole)."""
    mask = np.zeros(SHAPE, dtype=np.uint16)
    mask[3:9, 4:11, 1:4] = 1
    mask[5:7, 6:9, 2] = 0
    return mask


def expected_seg() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint16)  # the SEG's [frame, row, column] is [Z, Y, X] here
    mask[5:12, 3:9, 1:4] = 1
    mask[7:10, 5:7, 2] = 2  # the core, segment 2, wins where it overlaps the box
    return mask


def loaded(folder: Path) -> tuple[MetaTensor, DicomSeries]:
    image = cast(MetaTensor, load_volume(folder / "ct"))  # MONAI's loader gives a MetaTensor (with its affine)
    (series,) = scan_series(sorted((folder / "ct").iterdir()))
    return image, series


def test_seg_voxels_equal_the_cuboid_exactly(labelled):
    image, series = loaded(labelled)
    label, names = dicom_label(labelled / "seg.dcm", image, series, labelled / "ct")
    np.testing.assert_array_equal(np.asarray(label[0]), expected_seg())
    np.testing.assert_array_equal(np.asarray(label.affine), np.asarray(image.affine))
    assert names == {1: "Box", 2: "Core"}
    only_core, names = dicom_label(labelled / "seg.dcm", image, series, labelled / "ct", parse_label_map(["core=5"]))
    np.testing.assert_array_equal(np.asarray(only_core[0]), np.where(expected_seg() == 2, 5, 0))
    assert names == {5: "Core"}


def test_rtstruct_square_on_three_slices_is_the_hand_computed_mask(labelled):
    image, series = loaded(labelled)
    label, names = dicom_label(labelled / "rtstruct.dcm", image, series, labelled / "ct")
    np.testing.assert_array_equal(np.asarray(label[0]), expected_square())
    assert names == {1: "GTV"}


def test_dicom_labels_through_the_cache_land_on_the_original_grid(labelled, tmp_path):
    manifest = tmp_path / "cohort.csv"
    ct, seg, rt = labelled / "ct", labelled / "seg.dcm", labelled / "rtstruct.dcm"
    manifest.write_text(f"volume_id,image,label\nseg-case,{ct},{seg}\nrt-case,{ct},{rt}\n")
    options = ["--spacing", "1", "1", "2", "--no-crop", "--dtype", "float32", "--quiet"]
    label_map = ["--label-map", "box=1", "--label-map", "CORE=3", "--label-map", "GTV=1"]
    assert cli(["cache-volumes", str(manifest), "--out", str(tmp_path / "c"), *options, *label_map]) == 0
    cache = VolumeCache(tmp_path / "c")
    seg_values = np.where(expected_seg() == 2, 3, expected_seg())
    for volume_id, expected in (("seg-case", seg_values), ("rt-case", expected_square())):
        meta = cache.metadata(volume_id)
        shape, affine = original_geometry(meta, volume_id)
        back = to_original_grid(np.asarray(cache.label(volume_id)), meta["affine"], shape, affine)
        np.testing.assert_array_equal(back, expected)
    assert cache.metadata("seg-case")["label_names"] == {"1": "Box", "3": "Core"}
    assert cache.metadata("rt-case")["labels"] == [0, 1]


def test_labels_of_another_series_or_of_a_nifti_are_refused(labelled, tmp_path):
    image, series = loaded(labelled)
    other = read_series(labelled / "other")[0].SeriesInstanceUID
    with pytest.raises(VolumeError, match=f"drawn on series {other}, not on the image series {series.series_uid}"):
        dicom_label(labelled / "seg-other.dcm", image, series, labelled / "ct")
    with pytest.raises(VolumeError, match=f"drawn on series 1.2.3.4, not on the image series {series.series_uid}"):
        dicom_label(labelled / "rt-other.dcm", image, series, labelled / "ct")
    with pytest.raises(VolumeError, match="needs the DICOM image series it was drawn on"):
        dicom_label(labelled / "rtstruct.dcm", image, None, tmp_path / "ct.nii.gz")
    with pytest.raises(VolumeError, match=r"none of the --label-map names \['Liver'\]"):
        dicom_label(labelled / "rtstruct.dcm", image, series, labelled / "ct", (("Liver", 1),))


def test_contours_between_slices_are_refused():
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = ORIGIN
    mask = rasterise_contours([_square(-3.0, 0.0, -3.0, 0.0, ORIGIN[2] + 2.0)], affine, SHAPE)
    assert mask[:, :, 1].sum() == 16 and mask.sum() == 16  # slice 1; columns 2..5, rows 3..6
    with pytest.raises(VolumeError, match=r"z = 10\.00 mm is not on a slice"):
        rasterise_contours([_square(-3.0, 0.0, -3.0, 0.0, ORIGIN[2] + 3.0)], affine, SHAPE, "ROI")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_label_map(["GTV"])
