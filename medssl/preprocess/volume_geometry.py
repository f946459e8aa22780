"""The inverse of the volume cache's geometry: a label map on the cached grid back onto the original scan.

``medssl cache-volumes`` takes each volume through Orientation (RAS) → Spacing → CropForeground
(:func:`medssl.preprocess.volumes.resample`) and records, per volume, the ``affine`` of the grid it
stored (voxel ``(x, y, z)`` → world mm, RAS) and the ``original`` file's ``shape`` and ``affine`` as
MONAI loaded it. Every step of the chain is a change of voxel grid inside one world frame, so the
whole chain is undone by one composition of affines, whatever the orientation, spacing or crop::

    original voxel (i, j, k) ──original affine──▶ world mm ──inverse cached affine──▶ cached (x, y, z)

Each original voxel centre takes the label of the cached voxel whose footprint holds it (nearest
neighbour: round half up), and 0 (background) where it falls outside the cached grid, i.e. outside
the foreground crop. Nearest lookup copies stored values, never blends them, so integer labels stay
exact; where the cache kept the original spacing the map is a permutation, flip and shift, and the
round trip reproduces the original label voxel for voxel. This is done with NumPy on one slab of
the original grid at a time (memory bounded by a slab's coordinates, not the whole volume's), rather
than with an interpolator, so that the rounding and the out-of-grid rule are exactly the ones stated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import CacheError
from medssl.files import atomic_path

#: Original voxels mapped per step; bounds the coordinates held at once (~3 × 8 bytes × this).
SLAB_VOXELS = 1 << 21


def original_geometry(attrs: Mapping[str, Any], where: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the original file, from a cached volume's attrs; ``where`` names the volume in
    errors. Caches written before the original geometry was recorded cannot be mapped back."""
    original = attrs.get("original")
    if not isinstance(original, Mapping) or "shape" not in original or "affine" not in original:
        raise CacheError(
            f"{where}: the cache records no original geometry (attrs 'original' with 'shape' and 'affine'); "
            "re-cache the volume with this medssl version (medssl cache-volumes --overwrite)"
        )
    shape = tuple(int(v) for v in original["shape"])
    affine = np.asarray(original["affine"], dtype=np.float64)
    if len(shape) != 3 or affine.shape != (4, 4):
        raise CacheError(f"{where}: recorded original geometry is malformed (shape {shape}, affine {affine.shape})")
    return (shape[0], shape[1], shape[2]), affine


def cached_affine(attrs: Mapping[str, Any], where: str) -> np.ndarray:
    """The voxel (x, y, z) → world affine of the cached grid (the stored array is ``[Z, Y, X]``)."""
    if attrs.get("axes", "zyx") != "zyx" or "affine" not in attrs:
        raise CacheError(f"{where}: expected a cached volume with axes 'zyx' and an 'affine'; re-cache it")
    affine = np.asarray(attrs["affine"], dtype=np.float64)
    if affine.shape != (4, 4):
        raise CacheError(f"{where}: recorded affine has shape {affine.shape}, expected 4 × 4")
    return affine


def original_to_cached(original_affine: np.ndarray, cached: np.ndarray) -> np.ndarray:
    """The 4 × 4 map from an original voxel index (i, j, k) to a cached voxel (x, y, z), both as voxel
    centres: through world mm, which both affines share."""
    return np.linalg.inv(np.asarray(cached, dtype=np.float64)) @ np.asarray(original_affine, dtype=np.float64)


def to_original_grid(
    label_zyx: np.ndarray,
    cached: np.ndarray,
    original_shape: Sequence[int],
    original_affine: np.ndarray,
) -> np.ndarray:
    """``label_zyx`` (a label map on the cached grid, ``[Z, Y, X]``; ``cached`` its x, y, z affine) on the
    original file's voxel grid (``original_shape``, in the file's own axis order), nearest neighbour,
    0 outside the cached grid. Keeps the input's dtype; see the module docstring for the rule."""
    label_zyx = np.asarray(label_zyx)
    if label_zyx.ndim != 3:
        raise ValueError(f"expected a [Z, Y, X] label map, got shape {label_zyx.shape}")
    shape = tuple(int(n) for n in original_shape)
    transform = original_to_cached(original_affine, cached)
    bounds = np.array(label_zyx.shape[::-1])  # x, y, z sizes
    out = np.zeros(shape, dtype=label_zyx.dtype)
    plane = shape[1] * shape[2]
    step = max(1, SLAB_VOXELS // max(plane, 1))
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        i = np.arange(start, stop)[:, None, None]
        # cached coordinate = M[:, 0] i + M[:, 1] j + M[:, 2] k + t, per axis x, y, z
        xyz = [transform[a, 0] * i + transform[a, 1] * j + transform[a, 2] * k + transform[a, 3] for a in range(3)]
        index = [np.floor(c + 0.5).astype(np.int64) for c in xyz]  # nearest centre, ties upwards
        inside = np.ones(index[0].shape, dtype=bool)
        for axis in range(3):
            inside &= (index[axis] >= 0) & (index[axis] < bounds[axis])
        x, y, z = (ix[inside] for ix in index)
        out[start:stop][inside] = label_zyx[z, y, x]
    return out


def label_dtype(values: np.ndarray) -> np.dtype:
    """The smallest unsigned type that holds a label map (as the cache stores labels)."""
    top = int(values.max()) if values.size else 0
    if values.size and int(values.min()) < 0:
        raise ValueError("label values must be non-negative")
    return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


def write_nifti_atomically(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` as a NIfTI file with ``affine`` (both qform and sform, code scanner, so every viewer
    places it over the scan) under a temporary name in the same folder, then rename it into place: the
    final name only ever holds a complete file, and an interrupted write leaves no partial one."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code="scanner")
    image.set_sform(affine, code="scanner")
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
    return path
