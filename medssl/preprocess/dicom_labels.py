"""Labels as clinics store them: DICOM SEG and RT Structure Sets, onto the voxel grid of their image.

``medssl cache-volumes`` resamples a label with its image, so a label must first sit on the image's own
grid (same shape, same affine). Both DICOM label kinds are brought there in patient coordinates (LPS mm)
through the image's affine, which MONAI builds from ImagePositionPatient, ImageOrientationPatient and
PixelSpacing:

- **SEG** (read with highdicom): each segment's frames become a volume on the SEG's own geometry, which
  highdicom's ``match_geometry`` permutes, flips, pads and crops onto the image grid, without
  resampling; a SEG on another grid (other spacing, rotation, sub-voxel shift) is refused. A voxel is
  in a segment when its value is at least 0.5 (binary SEG: set; fractional SEG: half or more).
- **RT Structure Set** (pydicom + scikit-image): each ROI's CLOSED_PLANAR contours are mapped to
  continuous voxel indices, matched to the slice whose centre is within a quarter of a slice of the
  contour's plane (anything else is refused: a contour between slices or off the image), and filled
  slice by slice with ``skimage.draw.polygon``'s pixels (a voxel is inside when its centre is inside
  the polygon or on its boundary), computed scanline by scanline in
  :mod:`medssl.preprocess.polygon_fill`, which gives the same pixels without skimage's test of every
  pixel against every edge. Several contours of one ROI on one slice combine by exclusive or, so an
  inner contour cuts a hole (the usual reading of DICOM's nested contours). POINT and OPEN contours
  enclose nothing and are left out.

Label values: without a label map, a segment's SegmentNumber or an ROI's ROINumber (both are the
object's own numbering, so they are comparable across files only when the files number alike); with
one (``--label-map GTV=1 Liver=2``), the named segments/ROIs (SegmentLabel / ROIName, compared
case-insensitively) get those values and the others are left out. Where structures overlap the larger
value wins. A label that names a different series than its image (ReferencedSeriesSequence, or the
frame of reference when the series is not named) is refused, naming both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medssl.preprocess.dicom import DicomSeries
from medssl.preprocess.polygon_fill import fill_polygon
from medssl.preprocess.volumes import VolumeError

if TYPE_CHECKING:
    from monai.data.meta_tensor import MetaTensor

#: A contour's slice index may be this far (in slices) from a slice centre; farther ones are refused.
SLICE_TOLERANCE = 0.25
#: Sub-voxel tolerance when a SEG's geometry is matched to the image's (highdicom ``match_geometry``).
GRID_TOLERANCE = 0.01
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def parse_label_map(texts: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``["GTV=1", "Spinal Cord=2"]`` → ``(("GTV", 1), ("Spinal Cord", 2))``; names must be unique
    (case-insensitively) and values positive integers."""
    pairs: list[tuple[str, int]] = []
    for text in texts:
        name, sep, value = text.rpartition("=")
        name = name.strip()
        if not sep or not name or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"label map entry {text!r}: expected NAME=VALUE with VALUE a positive integer")
        pairs.append((name, int(value)))
    folded = [name.casefold() for name, _ in pairs]
    if len(set(folded)) != len(folded):
        raise ValueError(f"label map names repeat: {[name for name, _ in pairs]}")
    return tuple(pairs)


def label_values(
    names: Mapping[int, str], label_map: Sequence[tuple[str, int]], where: str
) -> dict[int, tuple[int, str]]:
    """Object number (segment / ROI) → (label value, name): the number itself without a map, else the
    mapped names' values. A map that matches none of the object's names is refused, listing them."""
    if not label_map:
        return {number: (number, name) for number, name in names.items()}
    wanted = {name.casefold(): value for name, value in label_map}
    folded = {number: name.strip().casefold() for number, name in names.items()}
    chosen = {number: (wanted[key], names[number]) for number, key in folded.items() if key in wanted}
    if not chosen:
        raise VolumeError(
            f"{where}: none of the --label-map names {[name for name, _ in label_map]} is in this label "
            f"(it has {sorted(names.values())})"
        )
    return chosen


def dicom_label(
    label_path: Path, image, series: DicomSeries | None, image_path: Path, label_map: Sequence[tuple[str, int]] = ()
) -> tuple[MetaTensor, dict[int, str]]:
    """The SEG or RT Structure Set ``label_path`` on ``image``'s grid (a ``[1, X, Y, Z]`` MetaTensor with
    the image's affine) and ``{value: name}`` of what was drawn; see the module docstring."""
    import pydicom
    from pydicom.uid import UID

    try:
        header = pydicom.dcmread(label_path, stop_before_pixels=True)
    except Exception as exc:  # pydicom's InvalidDicomError, EOFError, OSError, ...
        raise VolumeError(f"{label_path}: unreadable DICOM label ({type(exc).__name__}: {exc})") from None
    keyword = UID(str(header.get("SOPClassUID", ""))).keyword
    if keyword not in ("SegmentationStorage", "RTStructureSetStorage"):
        name = UID(str(header.get("SOPClassUID", ""))).name or "no SOP Class UID"
        raise VolumeError(f"{label_path}: a DICOM label must be a SEG or an RT Structure Set, this is {name}")
    kind = "SEG" if keyword == "SegmentationStorage" else "RT Structure Set"
    if series is None:
        raise VolumeError(
            f"{label_path}: a DICOM {kind} label needs the DICOM image series it was drawn on, "
            f"but the image {image_path} is not a DICOM series (its UIDs cannot be checked)"
        )
    affine_lps = LPS_FROM_RAS @ np.asarray(image.affine, dtype=np.float64)
    shape = tuple(int(n) for n in image.shape[1:])
    if kind == "SEG":
        values = _seg_on_grid(label_path, series, affine_lps, shape, label_map)
    else:
        values = _rtstruct_on_grid(label_path, series, affine_lps, shape, label_map)
    labels, names = values
    return _like(image, labels), names


def _like(image, labels: np.ndarray) -> MetaTensor:
    """``labels`` ``[X, Y, Z]`` as a ``[1, X, Y, Z]`` float32 MetaTensor on ``image``'s affine."""
    import torch
    from monai.data.meta_tensor import MetaTensor

    return MetaTensor(torch.from_numpy(labels[None].astype(np.float32)), affine=image.affine.clone())


def _check_reference(label_path: Path, kind: str, series: DicomSeries, series_uids: set, frame_uids: set) -> None:
    """Refuse a label whose referenced series (or, when it names none, frame of reference) is not the image's."""
    if series_uids and series.series_uid not in series_uids:
        raise VolumeError(
            f"{label_path}: this {kind} was drawn on series {', '.join(sorted(series_uids))}, "
            f"not on the image series {series.series_uid} ({series.describe()})"
        )
    if not series_uids and frame_uids and series.frame_of_reference_uid not in frame_uids:
        raise VolumeError(
            f"{label_path}: this {kind} is in frame of reference {', '.join(sorted(frame_uids))}, "
            f"not in the image series' {series.frame_of_reference_uid} ({series.describe()})"
        )


def _paint(masks: Mapping[int, np.ndarray], values: Mapping[int, tuple[int, str]], shape) -> tuple[np.ndarray, dict]:
    """One label map from boolean masks by object number, in increasing value (the larger value wins)."""
    out = np.zeros(shape, dtype=np.uint16)
    for number in sorted(masks, key=lambda n: values[n][0]):
        out[masks[number]] = values[number][0]
    return out, {values[n][0]: values[n][1] for n in masks}


# -- SEG ------------------------------------------------------------------------------------------
def _seg_on_grid(label_path: Path, series: DicomSeries, affine_lps, shape, label_map) -> tuple[np.ndarray, dict]:
    try:
        import highdicom as hd
    except ImportError:
        raise VolumeError(f"{label_path}: reading DICOM SEG needs highdicom: pip install 'medssl[dicom]'") from None
    try:
        seg = hd.seg.segread(label_path)
    except Exception as exc:  # highdicom checks the IOD while parsing
        raise VolumeError(f"{label_path}: unreadable DICOM SEG ({type(exc).__name__}: {exc})") from None
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    _check_reference(label_path, "SEG", series, referenced, {str(seg.get("FrameOfReferenceUID", ""))} - {""})
    names = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in seg.SegmentSequence}
    values = label_values(names, label_map, str(label_path))
    numbers = sorted(values)
    geometry = hd.VolumeGeometry(
        affine_lps, shape, "PATIENT", frame_of_reference_uid=series.frame_of_reference_uid or None
    )
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False, dtype=np.float32)
        matched = volume.match_geometry(geometry, tol=GRID_TOLERANCE)
    except (RuntimeError, ValueError) as exc:
        raise VolumeError(
            f"{label_path}: the SEG's grid is not the image's grid of {series.describe()} "
            f"and would need resampling ({exc})"
        ) from None
    array = np.asarray(matched.array).reshape(*shape, len(numbers))
    masks = {number: array[..., i] >= 0.5 for i, number in enumerate(numbers)}
    return _paint(masks, values, shape)


# -- RT Structure Set -----------------------------------------------------------------------------
def _rtstruct_on_grid(label_path: Path, series: DicomSeries, affine_lps, shape, label_map) -> tuple[np.ndarray, dict]:
    import pydicom

    ds = pydicom.dcmread(label_path)
    series_uids, frame_uids = set(), set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frame_uids.add(str(frame.get("FrameOfReferenceUID", "")))
        for study in frame.get("RTReferencedStudySequence", []):
            for referenced in study.get("RTReferencedSeriesSequence", []):
                series_uids.add(str(referenced.SeriesInstanceUID))
    frame_uids |= {str(roi.get("ReferencedFrameOfReferenceUID", "")) for roi in ds.get("StructureSetROISequence", [])}
    _check_reference(label_path, "RT Structure Set", series, series_uids, frame_uids - {""})
    names = {int(roi.ROINumber): str(roi.get("ROIName", "")) for roi in ds.get("StructureSetROISequence", [])}
    values = label_values(names, label_map, str(label_path))
    masks = {}
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        if number not in values:
            continue
        contours = [
            contour_points(contour)
            for contour in roi.get("ContourSequence", [])
            if str(contour.get("ContourGeometricType", "")).upper() == "CLOSED_PLANAR"
        ]
        where = f"{label_path}: ROI {values[number][1]!r}"
        masks[number] = rasterise_contours(contours, affine_lps, shape, where)
    return _paint(masks, values, shape)


def contour_points(contour) -> np.ndarray:
    """A contour item's ContourData as ``[N, 3]`` float64 LPS mm. The DS text is parsed in one numpy call:
    pydicom makes a Python object per number, which for body outlines (hundreds of points on every
    slice) took longer than filling the polygons. Anything unusual goes through pydicom as before."""
    value = contour.get_item("ContourData").value if "ContourData" in contour else None
    if isinstance(value, bytes):
        try:
            return np.array(value.decode("ascii").split("\\"), dtype=np.float64).reshape(-1, 3)
        except (UnicodeDecodeError, ValueError):
            pass
    return np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)


def rasterise_contours(
    contours: Sequence[np.ndarray], affine_lps: np.ndarray, shape: Sequence[int], where: str = "contour"
) -> np.ndarray:
    """Closed planar contours (each ``[N, 3]`` LPS mm) filled on the grid of ``affine_lps`` (voxel index
    ``(i, j, k)`` → LPS mm; ``k`` is the slice axis) as a boolean ``shape`` mask; see the module
    docstring for the slice matching, the boundary rule and holes."""
    to_voxel = np.linalg.inv(np.asarray(affine_lps, dtype=np.float64))
    mask = np.zeros(tuple(shape), dtype=bool)
    for points in contours:
        ijk = np.asarray(points, dtype=np.float64) @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        k = int(np.round(ijk[:, 2].mean()))
        off = float(np.abs(ijk[:, 2] - k).max())
        z_mm = float(np.asarray(points)[:, 2].mean())
        if off > SLICE_TOLERANCE:
            raise VolumeError(
                f"{where}: a contour at z = {z_mm:.2f} mm is not on a slice of the image "
                f"({off:.2f} slices from the nearest slice centre, or not in one slice plane)"
            )
        if not 0 <= k < shape[2]:
            raise VolumeError(f"{where}: a contour at z = {z_mm:.2f} mm lies outside the image's {shape[2]} slices")
        (row, column), box = fill_polygon(ijk[:, 0], ijk[:, 1], shape[:2])
        mask[row : row + box.shape[0], column : column + box.shape[1], k] ^= box
    return mask
