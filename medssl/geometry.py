"""Where a view's pixels or voxels came from: crop/flip/rotation records and the correspondences they give.

A view of an ``n``-dimensional image (``n`` = 2: ``[C, H, W]`` slices and tiles; ``n`` = 3: ``[C, D, H, W]``
volumes) made by a crop box, per-axis flips and a ``rot90`` in the last two axes records its geometry
as one fixed-size float tensor of ``4n + 1`` numbers (it collates like any other tensor; its length
gives ``n``)::

    geometry = (start[0..n), size[0..n), flip[0..n), rot, shape[0..n))      # geometry_size(n) = 4n + 1
    2D:  (top, left, height, width, flip_y, flip_x, rot, orig_h, orig_w)                  # 9 numbers
    3D:  (front, top, left, depth, height, width, flip_z, flip_y, flip_x, rot, orig_d, orig_h, orig_w)

``start``/``size`` are the crop box along each axis in units of the original size along that axis;
``flip[i]`` is 1 when the crop was mirrored along axis ``i``; ``rot`` is ``k`` in
``torch.rot90(view, k, dims=(-2, -1))``, applied after the flips (in 3D the axial ``H × W`` plane is
rotated); ``shape`` is the original size in pixels/voxels, for distances in pixels on non-square
images. A view is rendered crop → resize → flip → rotate, and mapped back in the reverse order.

Points are ``(y, x)`` in 2D and ``(z, y, x)`` in 3D, in normalised coordinates: pixel ``(i, j)`` of an
``H × W`` image covers ``[i/H, (i+1)/H] × [j/W, (j+1)/W]``, the convention of ``F.interpolate(...,
align_corners=False)``, and likewise per axis in 3D. Feature-map cells are flattened row-major
(``features.flatten(2)``).

Views are made in :mod:`medssl.data.geometric_views`; losses that compare feature-map cells across
views (LVM-Med's local cost, dense 3D correspondences) map them back here. Nothing here draws random
numbers, and nothing here imports from medssl.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

# Indices of the 2D record (the layout of geometry_size(2)); 3D records are read with `fields`.
TOP, LEFT, HEIGHT, WIDTH, FLIP_Y, FLIP_X, ROT, ORIG_H, ORIG_W = range(9)
FLIP = FLIP_X  # the left-right flip
GEOMETRY_SIZE = 9  # of a 2D record; geometry_size(ndim) in general


def geometry_size(ndim: int) -> int:
    """The length ``4·ndim + 1`` of an ``ndim``-dimensional geometry record."""
    return 4 * ndim + 1


def geometry_ndim(geometry: torch.Tensor) -> int:
    """The number of spatial dimensions of geometry records ``[..., 4n + 1]``."""
    ndim, rest = divmod(geometry.shape[-1] - 1, 4)
    if rest or ndim < 2:
        raise ValueError(f"a geometry record has 4n + 1 numbers for n >= 2 spatial dims, got {geometry.shape[-1]}")
    return ndim


class Fields(NamedTuple):
    """Views into geometry records ``[..., 4n + 1]``: ``start``, ``size``, ``flip``, ``shape`` ``[..., n]``
    and ``rot`` ``[..., 1]``."""

    start: torch.Tensor
    size: torch.Tensor
    flip: torch.Tensor
    rot: torch.Tensor
    shape: torch.Tensor


def fields(geometry: torch.Tensor) -> Fields:
    """The named parts of geometry records ``[..., 4n + 1]`` (views, not copies)."""
    n = geometry_ndim(geometry)
    return Fields(
        geometry[..., :n],
        geometry[..., n : 2 * n],
        geometry[..., 2 * n : 3 * n],
        geometry[..., 3 * n : 3 * n + 1],
        geometry[..., 3 * n + 1 :],
    )


def make_geometry(
    start: Sequence[int], size: Sequence[int], shape: Sequence[int], flip: bool | Sequence[bool] = False, rot: int = 0
) -> torch.Tensor:
    """The geometry record (layout in the module docstring) of a crop box ``start``/``size`` in pixels of
    an image of spatial ``shape``, mirrored along the axes where ``flip`` is true (a single bool is the
    left-right flip, the last axis), then rotated by ``rot90(·, rot, dims=(-2, -1))``."""
    n = len(shape)
    if len(start) != n or len(size) != n:
        raise ValueError(f"start {tuple(start)} and size {tuple(size)} need one entry per axis of shape {tuple(shape)}")
    if n < 2:
        raise ValueError(f"geometry needs at least 2 spatial dims, got shape {tuple(shape)}")
    flips = [False] * (n - 1) + [bool(flip)] if isinstance(flip, bool) else [bool(f) for f in flip]
    if len(flips) != n:
        raise ValueError(f"flip {tuple(flips)} needs one entry per axis of shape {tuple(shape)}")
    values = (
        [s / d for s, d in zip(start, shape, strict=True)]
        + [c / d for c, d in zip(size, shape, strict=True)]
        + [float(f) for f in flips]
        + [float(rot % 4)]
        + [float(d) for d in shape]
    )
    return torch.tensor(values, dtype=torch.float32)


def _unrotate(u: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised view coordinates → coordinates before ``rot90(·, k)``: ``rot90`` maps input
    ``(u', v') = (v, 1 - u)`` to output ``(u, v)``, applied ``k`` times."""
    cands_u = torch.stack([u, v, 1 - u, 1 - v])
    cands_v = torch.stack([v, 1 - u, 1 - v, u])
    index = k.expand_as(u)[None]
    return cands_u.gather(0, index)[0], cands_v.gather(0, index)[0]


def _rotate(u: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`_unrotate`: coordinates before ``rot90(·, k)`` → after."""
    cands_u = torch.stack([u, 1 - v, 1 - u, v])
    cands_v = torch.stack([v, u, 1 - v, 1 - u])
    index = k.expand_as(u)[None]
    return cands_u.gather(0, index)[0], cands_v.gather(0, index)[0]


def _prepare(points: torch.Tensor, geometry: torch.Tensor) -> tuple[torch.Tensor, Fields, torch.Tensor]:
    g = geometry.to(points.dtype if points.is_floating_point() else torch.float32)[..., None, :]
    f = fields(g)
    if points.shape[-1] != f.start.shape[-1]:
        raise ValueError(f"points have {points.shape[-1]} coordinates, geometry records {f.start.shape[-1]} dims")
    return g, f, f.rot.round().long()[..., 0] % 4


def view_to_original(points: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
    """Points ``[B, P, n]`` in normalised view coordinates → normalised original coordinates, undoing
    rotation (last two axes), flips and crop in that order; ``geometry`` ``[B, 4n + 1]``."""
    _, f, k = _prepare(points, geometry)
    u, v = _unrotate(points[..., -2], points[..., -1], k)
    x = torch.cat([points[..., :-2], u[..., None], v[..., None]], dim=-1)
    x = torch.where(f.flip > 0.5, 1 - x, x)
    return f.start + x * f.size


def original_to_view(points: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`view_to_original`: normalised original coordinates ``[B, P, n]`` → where the
    views with ``geometry`` ``[B, 4n + 1]`` show them (inside the view iff every coordinate is in [0, 1])."""
    _, f, k = _prepare(points, geometry)
    x = (points - f.start) / f.size
    x = torch.where(f.flip > 0.5, 1 - x, x)
    u, v = _rotate(x[..., -2], x[..., -1], k)
    return torch.cat([x[..., :-2], u[..., None], v[..., None]], dim=-1)


def grid_centres(grid: Sequence[int], dtype=torch.float32, device=None) -> torch.Tensor:
    """Centres ``[prod(grid), n]`` of an ``n``-D grid over the unit square/cube, row-major."""
    axes = [(torch.arange(r, dtype=dtype, device=device) + 0.5) / r for r in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))


def cell_centres(geometry: torch.Tensor, grid: Sequence[int], in_pixels: bool = False) -> torch.Tensor:
    """Original-image coordinates ``[B, prod(grid), n]`` of the centre of each feature-map cell of the
    views with ``geometry`` ``[B, 4n + 1]``, cells row-major as ``features.flatten(2)`` orders them.

    Normalised by the original size, or in original pixels/voxels when ``in_pixels`` (distances then
    keep the aspect of non-square images).
    """
    geometry = geometry.float()
    if len(grid) != geometry_ndim(geometry):
        raise ValueError(f"a {len(grid)}-D grid {tuple(grid)} for {geometry_ndim(geometry)}-D geometry")
    points = grid_centres(grid, device=geometry.device).expand(geometry.shape[0], -1, -1)
    centres = view_to_original(points, geometry)
    if in_pixels:
        centres = centres * fields(geometry).shape[:, None, :]
    return centres


def nearest_cells(centres_s: torch.Tensor, centres_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of view ``s``, the spatially closest cell of view ``t`` (LVM-Med's ``m(p)``):
    ``index`` ``[..., P]`` into ``t``'s cells and the Euclidean ``distance`` ``[..., P]`` to it.

    ``centres_s`` ``[..., P, n]`` and ``centres_t`` ``[..., Q, n]`` broadcast over leading dims (e.g.
    ``[B, 1, P, n]`` against ``[1, B, Q, n]`` for all pairs of images). Distances are exact
    differences (no matmul expansion), summed one axis at a time (no ``[..., P, Q, n]`` temporary), so
    coincident cells tie-break deterministically to the lowest index.
    """
    squared = None
    for axis in range(centres_s.shape[-1]):
        term = (centres_s[..., :, None, axis] - centres_t[..., None, :, axis]).square()
        squared = term if squared is None else squared + term
    assert squared is not None
    distance, index = squared.sqrt().min(dim=-1)
    return index, distance


def gather_cells(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``features`` ``[B, D, *grid]`` (2D or 3D grid) at cells ``index`` ``[B, P]`` → ``[B, P, D]`` (``y_t[m(p)]``)."""
    flat = features.flatten(2).transpose(1, 2)
    return flat.gather(1, index[..., None].expand(-1, -1, flat.shape[-1]))
