"""Volumes with known geometry (NIfTI and DICOM series) for tests, the demo and benchmarks.

Real MRI volumes ship with nibabel (``nibabel/tests/data``: anatomical.nii, example4d.nii.gz); these
helpers add what real data cannot give: a sphere of known physical radius and position, with its
label, at any spacing and orientation, and a CT-sized phantom in Hounsfield units.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def nibabel_data(name: str) -> Path:
    """A real volume shipped with nibabel, e.g. 'anatomical.nii' (MRI, 33×41×25, 2 mm)."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name


def grid_affine(
    spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0), flip_x: bool = False
) -> np.ndarray:
    """A voxel → world (RAS mm) affine; ``flip_x`` gives an LAS array, as many scanners write."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    if flip_x:
        affine[0, 0] = -affine[0, 0]
    return affine


def sphere(
    shape: Sequence[int],
    affine: np.ndarray,
    center_mm: Sequence[float],
    radius_mm: float,
    inside: float = 300.0,
    outside: float = 100.0,
    background: float = 0.0,
    body_radius_mm: float | None = None,
    noise: float = 5.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """An image and label (1 inside the sphere) sampled at voxel centres of ``affine``.

    A body (a larger sphere of ``outside`` intensity, radius ``body_radius_mm``, default 2.5×) sits on
    ``background`` so that foreground cropping has something to crop.
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    distance = np.linalg.norm(world - np.asarray(center_mm, dtype=np.float64), axis=-1)
    body = distance <= (body_radius_mm or 2.5 * radius_mm)
    label = (distance <= radius_mm).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = np.where(body, outside, background) + np.where(label > 0, inside - outside, 0.0)
    image = image + body * rng.normal(0.0, noise, size=image.shape)
    return image.astype(np.float32), label


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def ct_phantom(shape: Sequence[int] = (512, 512, 200), seed: int = 0) -> np.ndarray:
    """A CT-like volume in HU, ``[X, Y, Z]`` float32: air, an elliptic body (soft tissue with noise), a
    spine-like bone cylinder and two lungs."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    lungs = ((np.abs(x) - 0.38) / 0.25) ** 2 + (y / 0.35) ** 2 <= 1
    bone = (x**2 + (y + 0.45) ** 2) <= 0.08**2
    plane = np.full(shape[:2], -1000.0, dtype=np.float32)
    plane[body] = 40.0
    plane[body & lungs] = -850.0
    plane[bone] = 700.0
    volume = np.repeat(plane[..., None], shape[2], axis=2)
    volume += rng.normal(0.0, 10.0, size=shape).astype(np.float32) * body[..., None]
    return volume


def dicom_ras_affine(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The RAS affine of a series written by :func:`write_dicom_series` (DICOM patient space is LPS)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (-origin[0], -origin[1], origin[2])
    return affine


def write_dicom_series(
    folder: str | Path, volume: np.ndarray, spacing: Sequence[float], origin=(0.0, 0.0, 0.0)
) -> Path:
    """Write ``volume`` (``[X, Y, Z]``, values in HU) as an axial CT series, one file per slice,
    using pydicom's shipped CT_small.dcm as the template for every required tag. ``origin`` is the
    first voxel's ImagePositionPatient (LPS mm); :func:`dicom_ras_affine` gives the matching affine."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template_path = get_testdata_file("CT_small.dcm")  # a path (read=False), or None when it is absent
    if not isinstance(template_path, str):
        raise FileNotFoundError("pydicom's test file CT_small.dcm is missing; reinstall pydicom")
    template = pydicom.dcmread(template_path)
    series_uid, frame_uid = generate_uid(), generate_uid()
    for k in range(volume.shape[2]):
        ds = template.copy()
        pixels = np.round(volume[:, :, k].T).astype(np.int16)  # DICOM rows are y, columns are x
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * spacing[2])]
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"slice-{k:04d}.dcm", enforce_file_format=True)
    return folder
