"""Pairs of 3D crops that show the same anatomy, with known voxel correspondences (Alice, Jiang et al.,
ICCV 2023), for methods that align dense features across the two crops.

A :class:`CorrespondenceSampler` turns one or two volumes into::

    {"view_a": [1, D, H, W], "view_b": [1, D, H, W],      # float32 crops of crop_size, zero-padded at borders
     "points_a": [K, 3], "points_b": [K, 3],                # float (z, y, x): point k of view_a shows what
     ...}                                                   # point k of view_b shows

Points are continuous voxel indices of the crop: voxel ``(i, j, l)`` has its centre at ``(i, j, l)``,
so rounding a point gives the voxel that holds it. Every random draw comes from the ``rng``
(``np.random.Generator``) passed to :meth:`~CorrespondenceSampler.pair`, so a pair is reproducible from
a seed; datasets seed it per sample with ``np.random.default_rng(sample_seed(seed, epoch, index))``
(:mod:`medssl.data.seeding`).

- :class:`SameVolumeSampler` (the default): two overlapping crops of ONE volume, each flipped and rotated
  on its own; the correspondences are exact, from the crops' geometry records (:mod:`medssl.geometry`).
- :class:`BodyCoordinateSampler`: the same relative position in the body bounding boxes of two
  patients, Alice's cross-patient positive pair without its offline SAM embeddings. The map between the
  boxes is a per-axis scale and shift, i.e. already the cheapest affine registration; it is exact for
  bodies that differ by such a map and approximate otherwise (see the tests for measured errors).

Volumes are ``[D, H, W]`` or ``[1, D, H, W]`` arrays or tensors (NumPy memory maps of the volume cache
included: only the crops are read, plus one thresholded pass for a body box). The cache stores no body
mask, so bodies are found by an intensity threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from medssl.geometry import make_geometry, original_to_view

Volume = np.ndarray | torch.Tensor


def _spatial(volume: Volume) -> Volume:
    """``[D, H, W]`` of a ``[D, H, W]`` or single-channel ``[1, D, H, W]`` volume (not copied)."""
    if volume.ndim == 4 and volume.shape[0] == 1:
        return volume[0]
    if volume.ndim != 3:
        raise ValueError(f"a volume [D, H, W] or [1, D, H, W], got shape {tuple(volume.shape)}")
    return volume


def _sizes(size: int | Sequence[int]) -> tuple[int, int, int]:
    sizes = (int(size),) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"crop_size must be one or three positive sizes (D, H, W), got {size}")
    return sizes[0], sizes[1], sizes[2]


def crop_padded(volume: Volume, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The box ``start``..``start + size`` (voxels; may reach outside) of ``volume`` as float32
    ``[1, *size]``, zeros outside the volume. Reads only the box (cheap on memory maps)."""
    spatial = _spatial(volume)
    out = torch.zeros((1, *size), dtype=torch.float32)
    src, dst = [], []
    for s, c, n in zip(start, size, spatial.shape, strict=True):
        lo, hi = max(s, 0), min(s + c, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    region = spatial[tuple(src)]
    region = region if isinstance(region, torch.Tensor) else torch.from_numpy(np.array(region))  # read-only maps
    out[(0, *dst)] = region.float()
    return out


def _values(volume: Volume) -> np.ndarray:
    spatial = _spatial(volume)
    return spatial.numpy() if isinstance(spatial, torch.Tensor) else np.asarray(spatial)


def body_threshold(volume: Volume, threshold: float | None = None) -> float:
    """``threshold``, or when None 10 % of the way from the volume's minimum (the air) to its 99th
    percentile: a body/air cut that suits HU and z-scored intensities alike."""
    if threshold is not None:
        return float(threshold)
    values = _values(volume)
    low, high = float(values.min()), float(np.percentile(values[::2, ::2, ::2], 99))
    return low + 0.1 * (high - low)


def body_box(volume: Volume, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` ``[3]``: the first and last voxel index along each axis of the voxels above
    :func:`body_threshold` (the body). Axis projections of the mask, so one pass over the volume."""
    values = _values(volume)
    threshold = body_threshold(values, threshold)
    mask = values > threshold
    lows, highs = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            raise ValueError(f"no voxel above the body threshold {threshold:g}")
        lows.append(hits[0])
        highs.append(hits[-1])
    return np.asarray(lows, dtype=np.float64), np.asarray(highs, dtype=np.float64)


class CorrespondenceSampler(Protocol):
    """Makes two crops showing the same anatomy and ``K`` corresponding points (module docstring)."""

    def pair(self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator) -> dict: ...


class SameVolumeSampler:
    """Two overlapping crops of one volume, each independently flipped (each axis with ``flip_prob``)
    and rotated by ``rot90`` in the axial ``H × W`` plane (``k`` uniform in 0..3; 0 or 2 when the crop
    is not square in-plane). No resampling, so every voxel maps to a whole voxel and the correspondences
    are exact (the points are whole voxel indices).

    Crop A is centred on a random voxel (inside the body box when ``threshold`` is set, the box of
    :func:`body_box`); crop B's centre is within ``max_shift`` voxels of A's along every axis (at most
    ``(min(crop_size) - 1) // 2``, so B contains A's centre: the crops always overlap). The ``points``
    are uniform over the voxels both crops show that lie inside the volume (not the zero padding).
    ``volume_b`` is ignored. Also returns ``geometry_a``/``geometry_b`` (:mod:`medssl.geometry`
    records, in the original volume's normalised coordinates) and ``points_source`` ``[K, 3]`` (voxels
    of the volume). Draws: A's centre, the shift, A's flips and rotation, B's, the points.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 64,
        points: int = 64,
        max_shift: int | None = None,
        flip_prob: float = 0.5,
        rotate: bool = True,
        threshold: float | None = None,
    ):
        self.crop_size = _sizes(crop_size)
        limit = (min(self.crop_size) - 1) // 2
        self.max_shift = min(self.crop_size) // 4 if max_shift is None else int(max_shift)
        if not 0 <= self.max_shift <= limit:
            raise ValueError(f"max_shift must be in 0..{limit} for crops of {self.crop_size}, got {max_shift}")
        self.points, self.flip_prob, self.rotate, self.threshold = int(points), float(flip_prob), rotate, threshold

    def _augment(self, rng: np.random.Generator) -> tuple[list[bool], int]:
        flips = [bool(rng.random() < self.flip_prob) for _ in range(3)]
        if not self.rotate:
            return flips, 0
        square = self.crop_size[1] == self.crop_size[2]
        return flips, int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))

    def _view(self, volume: Volume, start: Sequence[int], flips: Sequence[bool], rot: int) -> torch.Tensor:
        """Crop → flip → rotate, the order :mod:`medssl.geometry` records."""
        view = crop_padded(volume, start, self.crop_size)
        axes = [1 + axis for axis in range(3) if flips[axis]]
        if axes:
            view = view.flip(axes)
        return torch.rot90(view, rot, dims=(-2, -1)).contiguous()

    def pair(self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator) -> dict:
        shape = tuple(int(n) for n in _spatial(volume_a).shape)
        size = np.asarray(self.crop_size)
        if self.threshold is None:
            low, high = np.zeros(3), np.asarray(shape) - 1.0
        else:
            low, high = body_box(volume_a, self.threshold)
        centre_a = np.array([rng.integers(int(lo), int(hi) + 1) for lo, hi in zip(low, high, strict=True)])
        shift = rng.integers(-self.max_shift, self.max_shift + 1, size=3)
        centre_b = np.clip(centre_a + shift, 0, np.asarray(shape) - 1)
        starts = [centre_a - size // 2, centre_b - size // 2]
        augments = [self._augment(rng), self._augment(rng)]
        geometry = [
            make_geometry(start.tolist(), self.crop_size, shape, flips, rot).double()
            for start, (flips, rot) in zip(starts, augments, strict=True)
        ]
        # the voxels both crops show inside the volume: non-empty, it holds A's centre
        lo = np.maximum.reduce([starts[0], starts[1], np.zeros(3, dtype=np.int64)])
        hi = np.minimum.reduce([starts[0] + size, starts[1] + size, np.asarray(shape)])
        source = np.stack([rng.integers(a, b, size=self.points) for a, b in zip(lo, hi, strict=True)], axis=-1)
        normalised = (torch.from_numpy(source).double() + 0.5) / torch.tensor(shape, dtype=torch.float64)
        out: dict = {"points_source": torch.from_numpy(source).float()}
        for name, start, (flips, rot), g in zip("ab", starts, augments, geometry, strict=True):
            out[f"view_{name}"] = self._view(volume_a, start.tolist(), flips, rot)
            view_size = torch.tensor(out[f"view_{name}"].shape[1:], dtype=torch.float64)
            points = original_to_view(normalised[None], g[None])[0] * view_size - 0.5
            out[f"points_{name}"] = points.round().float()  # whole voxels, up to the float32 record's rounding
            out[f"geometry_{name}"] = g.float()
        return out


class BodyCoordinateSampler:
    """Crops of two patients at the same normalised body coordinate (Alice's positive pair, matched
    by body bounding boxes instead of SAM embeddings).

    A point ``p_a`` is drawn inside the body of ``volume_a`` (uniform in its body box, retried until its
    intensity is above the threshold; up to ``tries``, Alice's rule) and mapped to
    ``p_b = low_b + (p_a - low_a) · scale``, ``scale = (high_b - low_b) / (high_a - low_a)`` per axis
    (boxes from :func:`body_box` with ``threshold``): a per-axis scale and shift, the cheapest affine
    registration, exact for bodies that differ by such a map. Crops of ``crop_size`` centred on the
    rounded points; no flips or rotations (Alice has none). The ``points`` are uniform over the part of
    crop A that the same map sends inside crop B. Bodies should be cached at a common spacing, or the
    crops cover different extents in millimetres.

    Also returns ``start_a``/``start_b`` (int ``[3]``, the crops' first voxel in their volume: crop
    point ``q`` is volume voxel ``start + q``) and ``scale`` ``[3]``. Draws: ``p_a`` tries, the points.
    """

    def __init__(
        self, crop_size: int | Sequence[int] = 64, points: int = 64, threshold: float | None = None, tries: int = 100
    ):
        self.crop_size, self.points, self.threshold, self.tries = _sizes(crop_size), int(points), threshold, int(tries)

    def _body_point(
        self, volume: Volume, threshold: float, low: np.ndarray, high: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """A voxel above ``threshold``, uniform in the body box (the last try if none is)."""
        spatial = _spatial(volume)
        point = np.zeros(3, dtype=np.int64)
        for _ in range(self.tries):
            point = np.array([rng.integers(int(lo), int(hi) + 1) for lo, hi in zip(low, high, strict=True)])
            if float(spatial[tuple(int(v) for v in point)]) > threshold:
                break
        return point.astype(np.float64)

    def pair(self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator) -> dict:
        if volume_b is None:
            raise ValueError("BodyCoordinateSampler pairs two volumes: pass volume_b")
        threshold_a = body_threshold(volume_a, self.threshold)
        low_a, high_a = body_box(volume_a, threshold_a)
        low_b, high_b = body_box(volume_b, self.threshold)
        scale = (high_b - low_b) / np.maximum(high_a - low_a, 1.0)
        point_a = self._body_point(volume_a, threshold_a, low_a, high_a, rng)
        point_b = low_b + (point_a - low_a) * scale
        size = np.asarray(self.crop_size)
        start_a = np.rint(point_a).astype(np.int64) - size // 2
        start_b = np.rint(point_b).astype(np.int64) - size // 2
        # crop-A points q with start_b + q_b inside crop B, q_b = point_b - start_b + (q - point_a + start_a) · scale
        offset_a, offset_b = point_a - start_a, point_b - start_b
        lo = np.maximum(0.0, offset_a + (0.0 - offset_b) / scale)
        hi = np.minimum(size - 1.0, offset_a + (size - 1.0 - offset_b) / scale)
        points_a = lo + rng.random((self.points, 3)) * (hi - lo)
        points_b = offset_b + (points_a - offset_a) * scale
        return {
            "view_a": crop_padded(volume_a, start_a.tolist(), self.crop_size),
            "view_b": crop_padded(volume_b, start_b.tolist(), self.crop_size),
            "points_a": torch.from_numpy(points_a).float(),
            "points_b": torch.from_numpy(points_b).float(),
            "start_a": torch.from_numpy(start_a),
            "start_b": torch.from_numpy(start_b),
            "scale": torch.from_numpy(scale).float(),
        }
