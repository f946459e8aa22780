"""Segmentations read back over the scans they were made for: a NIfTI file as the ``[Z, Y, X]`` RAS volume
that :func:`medssl.viz.volumes.orthogonal_views` draws, and the axial slices worth looking at.

``medssl segment`` writes each prediction on its original scan's voxel grid with the scan's affine, so a
scan, its label and the prediction read by :func:`read_nifti` share one grid, voxel for voxel, whatever
orientation the files were written in. Nothing is resampled: the axes are only permuted and flipped to
the closest RAS orientation (x left→right, y posterior→anterior, z inferior→superior), the order the
volume cache stores and the views expect.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medssl.errors import InputError


def to_ras_zyx(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``data`` in its file's voxel order ``[i, j, k]`` with ``affine`` (voxel → world mm) as a ``[Z, Y, X]``
    array in the closest RAS orientation, and its ``(z, y, x)`` spacing in mm. Axes are permuted and
    flipped (nibabel's ``io_orientation``), never interpolated, so label values stay as they are."""
    from nibabel import orientations

    volume, affine = np.asarray(data), np.asarray(affine, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"expected a 4 × 4 affine, got shape {affine.shape}")
    ornt = orientations.io_orientation(affine)  # per file axis: (RAS axis it becomes, flip)
    ras = orientations.apply_orientation(volume, ornt)
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # the length of one step along i, j, k
    x, y, z = (float(voxel_mm[int(np.flatnonzero(ornt[:, 0] == axis)[0])]) for axis in range(3))
    return np.ascontiguousarray(ras.transpose(2, 1, 0)), (z, y, x)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI scan, label or prediction as ``[Z, Y, X]`` RAS (:func:`to_ras_zyx`): the stored values (no
    scaling beyond the file's own slope) and the ``(z, y, x)`` spacing in mm. A 4D file with one frame
    is read as 3D."""
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = nib.load(path)
        if not isinstance(image, SpatialImage):
            raise TypeError(f"a {type(image).__name__}, not an image with an affine")
        data, affine = np.asarray(image.dataobj), image.affine
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, ... for a bad file
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if affine is None:
        raise InputError(f"{path}: the file has no affine (voxel → world mm)")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return to_ras_zyx(data, affine)


def slices_through(mask: np.ndarray, n: int = 3) -> list[int]:
    """``n`` axial slice indices spread evenly from the first to the last slice of ``mask`` (``[Z, Y, X]``)
    that holds a nonzero voxel, ends included: where a structure starts, its middle and where it ends,
    which is where a segmentation's errors along z show. Fewer when the structure spans fewer slices."""
    volume = np.asarray(mask)
    if volume.ndim != 3:
        raise ValueError(f"mask must be a [Z, Y, X] volume, got shape {volume.shape}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    filled = np.flatnonzero(volume.reshape(volume.shape[0], -1).any(axis=1))
    if filled.size == 0:
        raise ValueError("the mask has no nonzero voxel")
    if n == 1:
        return [int(round((filled[0] + filled[-1]) / 2))]
    return sorted({int(round(z)) for z in np.linspace(filled[0], filled[-1], n)})
