"""Dense embedding stores written by hand, with plain zarr and NumPy, in the layout that
``medssl embed --dense`` documents (as an external model's arrays would be), and "oracle" embeddings:
smooth positional codes of the anatomy each cell shows, so the true match of every voxel is known."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr

#: length scales (voxels) of the codes: the cosine of two codes is about exp(-|p - q|² / (2·scale²))
FINE_SCALE, COARSE_SCALE = 4.0, 16.0
FREQUENCIES = 128  #: random Fourier features per code (the kernel's noise is about 1/sqrt(2·128))


def write_dense_store(
    out: Path,
    volumes: Mapping[str, Mapping[str, Any]],
    normalisation: str = "l2",
    schema_version: int = 1,
) -> Path:
    """Write ``out/cache.zarr`` with zarr alone: ``volumes[id]`` has ``shape`` ([Z, Y, X]), ``fine`` and
    ``coarse`` (``[C, *grid]`` arrays) and ``fine_stride`` / ``coarse_stride`` (an int or 3)."""
    root = zarr.open_group(out / "cache.zarr", mode="w", zarr_format=3)
    root.attrs["medssl"] = {
        "schema_version": schema_version,
        "kinds": {"embeddings": {"params": {"model": "oracle positional code"}}},
    }
    embeddings = root.create_group("embeddings")
    for volume_id, item in volumes.items():
        group = embeddings.create_group(volume_id)
        group.attrs.update({"status": "complete", "shape": [int(n) for n in item["shape"]]})
        for level in ("coarse", "fine"):
            data = np.asarray(item[level], dtype=np.float16)
            array = group.create_array(level, shape=data.shape, dtype=data.dtype)
            array[:] = data
            stride = item[f"{level}_stride"]
            array.attrs.update(
                {"stride": [stride] * 3 if isinstance(stride, int) else list(stride), "normalisation": normalisation}
            )
    return out


def positional_code(coords: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    """``[2·FREQUENCIES, *grid]`` unit vectors from positions ``[3, *grid]`` (z, y, x voxels): random
    Fourier features ``cos(w·p), sin(w·p)`` with ``w ~ N(0, 1/scale²)``, so ``cos(code(p), code(q)) =
    mean_k cos(w_k·(p − q))``, a smooth bump of width ``scale`` around ``p = q`` (one peak: no period)."""
    frequencies = np.random.default_rng(seed).normal(0.0, 1.0 / scale, size=(FREQUENCIES, 3))
    phase = np.einsum("kd,d...->k...", frequencies, coords)
    return np.concatenate([np.cos(phase), np.sin(phase)]) / math.sqrt(FREQUENCIES)


def cell_means(coords: np.ndarray, stride: int) -> np.ndarray:
    """``[3, *ceil(shape / stride)]``: the mean position each cell shows, from per-voxel positions ``[3, *shape]``
    (cells at the far edge average the voxels they hold)."""
    tensor = torch.from_numpy(coords.astype(np.float32))[None]
    sums = F.avg_pool3d(tensor, stride, ceil_mode=True, divisor_override=1)
    counts = F.avg_pool3d(torch.ones_like(tensor[:, :1]), stride, ceil_mode=True, divisor_override=1)
    return (sums / counts)[0].numpy()


def oracle_maps(source_coords: np.ndarray, fine_stride: int = 4, coarse_stride: int = 16) -> dict[str, Any]:
    """An oracle dense embedding of a volume whose voxel ``q`` shows the reference anatomy at
    ``source_coords[:, q]`` (``[3, *shape]``): each cell codes the mean reference position it shows."""
    shape = list(source_coords.shape[1:])
    return {
        "shape": shape,
        "fine": positional_code(cell_means(source_coords, fine_stride), FINE_SCALE),
        "coarse": positional_code(cell_means(source_coords, coarse_stride), COARSE_SCALE, seed=1),
        "fine_stride": fine_stride,
        "coarse_stride": coarse_stride,
    }


def identity_coords(shape: Sequence[int]) -> np.ndarray:
    """``[3, *shape]``: every voxel shows itself (the reference volume)."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
