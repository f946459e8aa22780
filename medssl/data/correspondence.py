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
- :class:`EmbeddingSampler`: Alice's own pairs: a query voxel of one patient matched to the voxel of
  another whose stored dense embedding (``medssl embed --dense``, fine + coarse, cosine) is most
  similar, accepted above a score with bounded retries, otherwise a :class:`SameVolumeSampler` pair.

A sampler's :meth:`~CorrespondenceSampler.draw_pair` returns the crops as cut with their flips and
rotations, which :class:`PairViews` applies per sample or, as device views, per batch on the GPU.

Samplers that look volumes up (the embedding sampler) get the two volumes' cache ids as ``ids``;
the others ignore it.

Volumes are ``[D, H, W]`` or ``[1, D, H, W]`` arrays or tensors (NumPy memory maps of the volume cache
included: only the crops are read, plus one thresholded pass for a body box). The cache stores no body
mask, so bodies are found by an intensity threshold.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from medssl.cache import DenseMap, EmbeddingCache
from medssl.data.batched_ops import rot90_flips
from medssl.data.view_ops import VIEW_PARAMS, DeviceViews, where_on
from medssl.data.volume_views import flip_batch
from medssl.errors import CacheError
from medssl.geometry import make_geometry, original_to_view

Volume = np.ndarray | torch.Tensor
VolumeIds = tuple[str, str] | None  #: the cache ids of (volume_a, volume_b), for samplers that look volumes up


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


def body_point(
    volume: Volume, threshold: float, box: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, tries: int
) -> np.ndarray:
    """A voxel above ``threshold``, uniform in the body ``box`` (:func:`body_box`), redrawn up to ``tries``
    times (the last draw if none is): Alice's query point."""
    spatial = _spatial(volume)
    point = np.zeros(3, dtype=np.int64)
    for _ in range(max(1, tries)):
        point = np.array([rng.integers(int(lo), int(hi) + 1) for lo, hi in zip(*box, strict=True)])
        if float(spatial[tuple(int(v) for v in point)]) > threshold:
            break
    return point.astype(np.float64)


class CorrespondenceSampler(Protocol):
    """Makes two crops showing the same anatomy and ``K`` corresponding points (module docstring).

    :meth:`draw_pair` is the sampler's own work: the crops as cut, each with the flips (``flips_a``,
    ``[3]`` bool, per axis) and ``rot90`` turns in the ``H × W`` plane (``rot_a``, int64) that make its
    view, and the points of the views; :meth:`pair` applies them. Device views (:class:`PairViews`)
    flip and rotate on the training device instead."""

    def draw_pair(
        self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator, *, ids: VolumeIds = None
    ) -> dict: ...

    def pair(
        self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator, *, ids: VolumeIds = None
    ) -> dict:
        """The pair with its views flipped and rotated (:func:`augmented`)."""
        return augmented(self.draw_pair(volume_a, volume_b, rng, ids=ids))


def flip_rotate(view: torch.Tensor, flips: Sequence[bool] | torch.Tensor, rot: int | torch.Tensor) -> torch.Tensor:
    """``view [C, D, H, W]`` flipped along the spatial axes of ``flips``, then turned ``rot`` times by
    ``rot90`` in the ``H × W`` plane: the order :mod:`medssl.geometry` records."""
    axes = [1 + axis for axis in range(3) if bool(flips[axis])]
    if axes:
        view = view.flip(axes)
    return torch.rot90(view, int(rot), dims=(-2, -1)).contiguous()


def flip_rotate_batch(views: torch.Tensor, flips: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """:func:`flip_rotate` of every sample of ``views [B, C, D, H, W]`` (``flips [B, 3]``, ``rot [B]``)
    at once: ``rot90`` by ``k`` is a flip of W (``k = 1``), of both (``k = 2``) or of H (``k = 3``), then a
    transpose of ``H × W`` for odd ``k``; flips commute, so each axis is flipped once."""
    turns = rot.to(views.device).long() % 4
    extra = rot90_flips(turns, 3)
    views = flip_batch(views, flips.to(views.device).bool() ^ extra, (0, 1, 2))
    if views.shape[-1] == views.shape[-2]:  # odd turns need a square H × W (the samplers draw none otherwise)
        views = where_on(turns % 2 == 1, views.transpose(-2, -1), views)
    return views.contiguous()


def _unturned(name: str) -> dict:
    """The flips/rotation entries of a crop that is its own view (samplers without augmentation)."""
    return {f"flips_{name}": torch.zeros(3, dtype=torch.bool), f"rot_{name}": torch.tensor(0)}


def augmented(drawn: dict) -> dict:
    """A :meth:`CorrespondenceSampler.draw_pair` result with each crop replaced by its view."""
    out = dict(drawn)
    for name in "ab":
        out[f"view_{name}"] = flip_rotate(drawn[f"view_{name}"], drawn[f"flips_{name}"], drawn[f"rot_{name}"])
    return out


#: where a pair sample carries its crops' flips and turns (one ``{"flip", "rot"}`` per view) until they are applied
PAIR_AUGMENTS = "augments"


def pair_augments(drawn: dict) -> list[dict[str, torch.Tensor]]:
    """The :data:`PAIR_AUGMENTS` entry of a :meth:`CorrespondenceSampler.draw_pair` result."""
    return [{"flip": drawn[f"flips_{name}"], "rot": drawn[f"rot_{name}"]} for name in "ab"]


class PairViews(DeviceViews):
    """The views of a pair sample ``{"views": [crop_a, crop_b], "augments": [...], ...}`` (the crops as
    cut and :func:`pair_augments`): each crop flipped and turned as its sampler drew it (the sampler
    draws them, since its points depend on them). Per sample (:func:`flip_rotate`) or, as device views,
    per batch on the training device (:func:`flip_rotate_batch`); ``augments`` is consumed either way."""

    key = "views"

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        augments = out.pop(PAIR_AUGMENTS)
        out[self.key] = [flip_rotate(v, a["flip"], a["rot"]) for v, a in zip(sample[self.key], augments, strict=True)]
        return out

    def draw_sample(self, sample: dict) -> dict:
        out = dict(sample)
        out[VIEW_PARAMS] = out.pop(PAIR_AUGMENTS)
        return out

    def apply_batch(self, batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k != VIEW_PARAMS}
        out[self.key] = [
            flip_rotate_batch(v, p["flip"], p["rot"]) for v, p in zip(batch[self.key], batch[VIEW_PARAMS], strict=True)
        ]
        return out


class SameVolumeSampler(CorrespondenceSampler):
    """Two overlapping crops of one volume, each independently flipped (each axis with ``flip_prob``)
    and rotated by ``rot90`` in the axial ``H × W`` plane (``k`` uniform in 0..3; 0 or 2 when the crop
    is not square in-plane). No resampling, so every voxel maps to a whole voxel and the correspondences
    are exact (the points are whole voxel indices).

    Crop A is centred on a random voxel (inside the body box when ``threshold`` is set, the box of
    :func:`body_box`); crop B's centre is within ``max_shift`` voxels of A's along every axis (at most
    ``(min(crop_size) - 1) // 2``, so B contains A's centre: the crops always overlap). The ``points``
    are uniform over the voxels both crops show that lie inside the volume (not the zero padding).
    ``volume_b`` is ignored. Also returns ``geometry_a``/``geometry_b`` (:mod:`medssl.geometry`
    records, in the original volume's normalised coordinates; the flips and turns also as
    ``flips_a``/``rot_a``) and ``points_source`` ``[K, 3]`` (voxels
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

    def draw_pair(
        self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator, *, ids: VolumeIds = None
    ) -> dict:
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
            out[f"view_{name}"] = crop_padded(volume_a, start.tolist(), self.crop_size)
            out[f"flips_{name}"], out[f"rot_{name}"] = torch.tensor(flips), torch.tensor(rot)
            turned = self.crop_size if rot % 2 == 0 else (self.crop_size[0], self.crop_size[2], self.crop_size[1])
            view_size = torch.tensor(turned, dtype=torch.float64)
            points = original_to_view(normalised[None], g[None])[0] * view_size - 0.5
            out[f"points_{name}"] = points.round().float()  # whole voxels, up to the float32 record's rounding
            out[f"geometry_{name}"] = g.float()
        return out


class BodyCoordinateSampler(CorrespondenceSampler):
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

    def draw_pair(
        self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator, *, ids: VolumeIds = None
    ) -> dict:
        if volume_b is None:
            raise ValueError("BodyCoordinateSampler pairs two volumes: pass volume_b")
        threshold_a = body_threshold(volume_a, self.threshold)
        low_a, high_a = body_box(volume_a, threshold_a)
        low_b, high_b = body_box(volume_b, self.threshold)
        scale = (high_b - low_b) / np.maximum(high_a - low_a, 1.0)
        point_a = body_point(volume_a, threshold_a, (low_a, high_a), rng, self.tries)
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
            **_unturned("a"),
            **_unturned("b"),
        }


# -- matching by stored dense embeddings -----------------------------------------------------------
@dataclass(frozen=True)
class DenseEmbedding:
    """One volume's dense embedding in memory: unit-length ``fine`` and ``coarse`` maps ``[C, *grid]``
    (float32) and their strides ``[3]`` (voxels per cell along z, y, x). Cell ``i`` of a map at stride
    ``s`` covers voxels ``[i·s, (i+1)·s)``; its centre is voxel ``(i + 0.5)·s − 0.5``."""

    fine: torch.Tensor
    coarse: torch.Tensor
    fine_stride: np.ndarray
    coarse_stride: np.ndarray

    @classmethod
    def from_maps(cls, maps: dict[str, DenseMap]) -> DenseEmbedding:
        """Read a store's ``coarse``/``fine`` maps (:meth:`~medssl.cache.EmbeddingCache.dense`) whole,
        normalising the vectors of maps stored raw (``normalisation: "none"``)."""
        loaded = {}
        for name, level in maps.items():
            array = torch.from_numpy(np.asarray(level.array[...], dtype=np.float32))
            loaded[name] = array if level.normalised else torch.nn.functional.normalize(array, dim=0)
        return cls(
            loaded["fine"],
            loaded["coarse"],
            np.asarray(maps["fine"].stride, dtype=np.float64),
            np.asarray(maps["coarse"].stride, dtype=np.float64),
        )

    def vectors_at(self, point: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``fine`` and ``coarse`` vectors of the cells holding voxel ``point`` (z, y, x)."""
        return self.fine[(slice(None), *_cell(point, self.fine_stride, self.fine.shape[1:]))], self.coarse[
            (slice(None), *_cell(point, self.coarse_stride, self.coarse.shape[1:]))
        ]


def _cell(point: np.ndarray, stride: np.ndarray, grid: Sequence[int]) -> tuple[int, int, int]:
    index = np.clip(np.floor(np.asarray(point, dtype=np.float64) / stride), 0, np.asarray(grid) - 1).astype(int)
    return int(index[0]), int(index[1]), int(index[2])


def cell_centres(size: int, stride: float) -> np.ndarray:
    """The voxel positions ``(i + 0.5)·stride − 0.5`` of the ``size`` cells along one axis."""
    return (np.arange(size, dtype=np.float64) + 0.5) * stride - 0.5


def _linear_weights(positions: np.ndarray, size: int) -> torch.Tensor:
    """``[len(positions), size]``: linear interpolation weights at continuous indices (clamped to the ends)."""
    clamped = np.clip(positions, 0.0, size - 1.0)
    low = np.minimum(np.floor(clamped).astype(int), size - 1)
    high = np.minimum(low + 1, size - 1)
    frac = clamped - low
    weights = np.zeros((len(positions), size))
    rows = np.arange(len(positions))
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    return torch.from_numpy(weights).float()


def similarity(fine_q: torch.Tensor, coarse_q: torch.Tensor, target: DenseEmbedding) -> torch.Tensor:
    """SAM's score of a query over the whole ``target`` on its fine grid, ``[Df, Hf, Wf]`` in [-1, 1]:
    ``(cos(fine_q, fine) + cos(coarse_q, coarse ↑)) / 2``, where ↑ is trilinear interpolation of the
    coarse cosine map at the fine cells' centres. Interpolating the cosine map equals taking the dot
    product with linearly interpolated coarse vectors (the dot product is linear) and needs no
    ``[Cc, *fine grid]`` array; only the vectors' renormalisation after interpolation is skipped."""
    fine_sim = torch.einsum("c,cdhw->dhw", fine_q, target.fine)
    coarse_sim = torch.einsum("c,cdhw->dhw", coarse_q, target.coarse)
    weights = [
        _linear_weights((cell_centres(n_fine, s_fine) + 0.5) / s_coarse - 0.5, n_coarse)
        for n_fine, s_fine, n_coarse, s_coarse in zip(
            target.fine.shape[1:], target.fine_stride, target.coarse.shape[1:], target.coarse_stride, strict=True
        )
    ]
    upsampled = torch.einsum("ad,be,cf,def->abc", *weights, coarse_sim)
    return (fine_sim + upsampled) / 2


def match_point(source: DenseEmbedding, target: DenseEmbedding, point: np.ndarray) -> tuple[np.ndarray, float]:
    """The voxel of ``target`` whose embedding best matches voxel ``point`` of ``source`` (the centre of
    the best fine cell, ``[3]`` float) and its :func:`similarity` score."""
    scores = similarity(*source.vectors_at(point), target)
    flat = int(torch.argmax(scores))
    index = np.unravel_index(flat, tuple(scores.shape))
    centre = (np.asarray(index, dtype=np.float64) + 0.5) * target.fine_stride - 0.5
    return centre, float(scores.reshape(-1)[flat])


class EmbeddingSampler(CorrespondenceSampler):
    """Crops of two patients centred on voxels whose stored dense embeddings match (Alice's SAM pairs).

    The embeddings are a store of ``medssl embed --dense`` (or an external model's arrays in its layout;
    :mod:`medssl.export.embeddings`) holding both volumes under their cache ids, passed to
    :meth:`pair` as ``ids``. A query voxel ``p_a`` is drawn in A's body (as
    :class:`BodyCoordinateSampler` draws it) and matched over all of B (:func:`match_point`); the
    first query scoring above ``min_score`` within ``tries`` draws is kept, else the pair falls back to
    ``fallback`` (a :class:`SameVolumeSampler` on A by default), as Alice falls back when SAM finds nothing.

    A matched pair: crops of ``crop_size`` centred on ``p_a`` and on ``p_b`` (rounded to whole voxels;
    ``p_b``, a fine cell's centre, moves by at most half a voxel), no flips or rotations. Its ``points``
    are uniform over the crop voxels inside both volumes, and ``points_b == points_a``: crop voxel ``q``
    of A is paired with crop voxel ``q`` of B, i.e. the translation ``p ↦ p − p_a + p_b``. That is the
    assumption the pair itself makes (the crops are treated as showing the same anatomy as wholes);
    matching each point by its embedding too would cost a search per point and be only as good as the
    embeddings, which are what the pair is meant to improve; the error of this map grows with the
    distance from the centre where the patients differ by more than a shift (see the tests).

    Every pair has ``matched`` (bool), ``score`` (the kept query's score, or the best one when none was
    kept) and ``tries`` (queries drawn). A matched pair also has ``start_a``/``start_b`` (int ``[3]``,
    the crops' first voxels) and ``point_a``/``point_b`` (``[3]``, the matched voxels); a fallback pair
    has the fallback sampler's keys. Draws: the queries (each a :func:`body_point`), then the points or
    the fallback's draws.

    The store is opened lazily in each process (DataLoader workers pickle the sampler, not the store);
    each pair reads both volumes' maps whole.
    """

    def __init__(
        self,
        embeddings: str | os.PathLike,
        crop_size: int | Sequence[int] = 64,
        points: int = 64,
        min_score: float = 0.7,
        tries: int = 100,
        threshold: float | None = None,
        fallback: CorrespondenceSampler | None = None,
    ):
        if tries < 1:
            raise ValueError(f"tries must be at least 1, got {tries}")
        self.path = Path(embeddings)
        self.crop_size, self.points, self.threshold = _sizes(crop_size), int(points), threshold
        self.min_score, self.tries = float(min_score), int(tries)
        self.fallback = fallback or SameVolumeSampler(crop_size=crop_size, points=points, threshold=threshold)
        self._store: EmbeddingCache | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> EmbeddingCache:
        if self._store is None:
            self._store = EmbeddingCache(self.path)
        return self._store

    def require(self, volume_ids: Sequence[str]) -> EmbeddingSampler:
        """Refuse, naming the store and the volumes, unless every one of ``volume_ids`` has dense maps."""
        self.store.require(volume_ids, noun="volume", command="medssl embed --dense")
        for volume_id in volume_ids:
            self.store.dense(volume_id)
        return self

    def embedding(self, volume_id: str, volume: Volume) -> DenseEmbedding:
        """The dense embedding of ``volume_id``, checked to be made from a volume of ``volume``'s shape."""
        stored, shape = self.store.volume_shape(volume_id), tuple(int(n) for n in _spatial(volume).shape)
        if stored != shape:
            raise CacheError(
                f"{self.path}: the embeddings of {volume_id!r} were made from a volume of shape {list(stored)}, "
                f"the cache's is {list(shape)}; re-run medssl embed --dense on this cache"
            )
        return DenseEmbedding.from_maps(self.store.dense(volume_id))

    def draw_pair(
        self, volume_a: Volume, volume_b: Volume | None, rng: np.random.Generator, *, ids: VolumeIds = None
    ) -> dict:
        if volume_b is None or ids is None:
            raise ValueError("EmbeddingSampler pairs two volumes of its store: pass volume_b and ids=(id_a, id_b)")
        source, target = self.embedding(ids[0], volume_a), self.embedding(ids[1], volume_b)
        threshold = body_threshold(volume_a, self.threshold)
        box = body_box(volume_a, threshold)
        best = -np.inf
        for attempt in range(1, self.tries + 1):
            point_a = body_point(volume_a, threshold, box, rng, self.tries)
            point_b, score = match_point(source, target, point_a)
            best = max(best, score)
            if score > self.min_score:
                out = self._crops(volume_a, volume_b, point_a, point_b, rng)
                return {**out, "matched": True, "score": score, "tries": attempt}
        out = self.fallback.draw_pair(volume_a, None, rng, ids=ids)
        return {**out, "matched": False, "score": float(best), "tries": self.tries}

    def _crops(
        self, volume_a: Volume, volume_b: Volume, point_a: np.ndarray, point_b: np.ndarray, rng: np.random.Generator
    ) -> dict:
        size = np.asarray(self.crop_size)
        start_a = np.rint(point_a).astype(np.int64) - size // 2
        start_b = np.rint(point_b).astype(np.int64) - size // 2
        shape_a, shape_b = np.asarray(_spatial(volume_a).shape), np.asarray(_spatial(volume_b).shape)
        # crop voxels inside both volumes: non-empty, it holds the crops' centres
        lo = np.maximum.reduce([np.zeros(3, dtype=np.int64), -start_a, -start_b])
        hi = np.minimum.reduce([size, shape_a - start_a, shape_b - start_b])
        points = np.stack([rng.integers(a, b, size=self.points) for a, b in zip(lo, hi, strict=True)], axis=-1)
        return {
            "view_a": crop_padded(volume_a, start_a.tolist(), self.crop_size),
            "view_b": crop_padded(volume_b, start_b.tolist(), self.crop_size),
            "points_a": torch.from_numpy(points).float(),
            "points_b": torch.from_numpy(points).float(),
            "start_a": torch.from_numpy(start_a),
            "start_b": torch.from_numpy(start_b),
            "point_a": torch.from_numpy(point_a).float(),
            "point_b": torch.from_numpy(point_b).float(),
            **_unturned("a"),
            **_unturned("b"),
        }
