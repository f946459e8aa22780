"""Where a view's pixels came from: crop/flip/rotation records and the correspondences they give.

A view made by a random resized crop, a left-right flip and a ``rot90`` records its geometry as a
fixed-size float tensor (it collates like any other tensor)::

    geometry = (top, left, height, width, flip, rot, orig_h, orig_w)            # GEOMETRY_SIZE = 8

``top``/``height`` are in units of the original height and ``left``/``width`` of the original width
(the crop box in normalised coordinates); ``flip`` is 1 when the crop was mirrored left-right; ``rot``
is ``k`` in ``torch.rot90(view, k, dims=(-2, -1))``, applied after the flip; ``orig_h``/``orig_w`` are
the original size in pixels, for distances in pixels on non-square images.

Points are ``(y, x)`` in normalised original-image coordinates: pixel ``(i, j)`` of an ``H × W``
image covers ``[i/H, (i+1)/H] × [j/W, (j+1)/W]``, the convention of ``F.interpolate(...,
align_corners=False)``. Feature-map cells are flattened row-major (``features.flatten(-2)``).

Views are made in :mod:`medssl.data.geometric_views`; losses that compare feature-map cells across
views (LVM-Med's local cost) map them back here. Nothing here draws random numbers.
"""

from __future__ import annotations

import torch

GEOMETRY_SIZE = 8
TOP, LEFT, HEIGHT, WIDTH, FLIP, ROT, ORIG_H, ORIG_W = range(GEOMETRY_SIZE)


def make_geometry(top: int, left: int, crop_h: int, crop_w: int, flip: bool, rot: int, h: int, w: int) -> torch.Tensor:
    """The geometry tensor (layout in the module docstring) of a pixel crop box, flip and rotation."""
    return torch.tensor([top / h, left / w, crop_h / h, crop_w / w, float(flip), float(rot % 4), h, w], dtype=torch.float32)


def _unrotate(u: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised view coordinates → coordinates before ``rot90(·, k)``: ``rot90`` maps input
    ``(u', v') = (v, 1 - u)`` to output ``(u, v)``, applied ``k`` times."""
    cands_u = torch.stack([u, v, 1 - u, 1 - v])
    cands_v = torch.stack([v, 1 - u, 1 - v, u])
    index = k.expand_as(u)[None]
    return cands_u.gather(0, index)[0], cands_v.gather(0, index)[0]


def view_to_original(points: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
    """Points ``[B, P, 2]`` (y, x) in normalised view coordinates → normalised original coordinates,
    undoing rotation, flip and crop in that order."""
    g = geometry.to(points.dtype if points.is_floating_point() else torch.float32)[:, None, :]
    k = g[..., ROT].round().long() % 4
    u, v = _unrotate(points[..., 0], points[..., 1], k)
    v = torch.where(g[..., FLIP] > 0.5, 1 - v, v)
    return torch.stack([g[..., TOP] + u * g[..., HEIGHT], g[..., LEFT] + v * g[..., WIDTH]], dim=-1)


def grid_centres(grid: tuple[int, int], dtype=torch.float32, device=None) -> torch.Tensor:
    """Centres ``[R*S, 2]`` (y, x) of an ``R × S`` grid over the unit square, row-major."""
    r, s = grid
    ys = (torch.arange(r, dtype=dtype, device=device) + 0.5) / r
    xs = (torch.arange(s, dtype=dtype, device=device) + 0.5) / s
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(r * s, 2)


def cell_centres(geometry: torch.Tensor, grid: tuple[int, int], in_pixels: bool = False) -> torch.Tensor:
    """Original-image coordinates ``[B, R*S, 2]`` (y, x) of the centre of each feature-map cell of the
    views with ``geometry`` ``[B, 8]``, cells row-major as ``features.flatten(-2)`` orders them.

    Normalised by the original size, or in original pixels when ``in_pixels`` (distances then keep
    the aspect of non-square images).
    """
    geometry = geometry.float()
    points = grid_centres(grid, device=geometry.device).expand(geometry.shape[0], -1, -1)
    centres = view_to_original(points, geometry)
    if in_pixels:
        centres = centres * geometry[:, None, [ORIG_H, ORIG_W]]
    return centres


def nearest_cells(centres_s: torch.Tensor, centres_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of view ``s``, the spatially closest cell of view ``t`` (LVM-Med's ``m(p)``):
    ``index`` ``[..., P]`` into ``t``'s cells and the Euclidean ``distance`` ``[..., P]`` to it.

    ``centres_s`` ``[..., P, 2]`` and ``centres_t`` ``[..., Q, 2]`` broadcast over leading dims (e.g.
    ``[B, 1, P, 2]`` against ``[1, B, Q, 2]`` for all pairs of images). Distances are exact
    differences (no matmul expansion), so coincident cells tie-break deterministically to the lowest index.
    """
    distance = (centres_s[..., :, None, :] - centres_t[..., None, :, :]).square().sum(-1).sqrt()
    distance, index = distance.min(dim=-1)
    return index, distance


def gather_cells(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``features`` ``[B, D, R, S]`` at cells ``index`` ``[B, P]`` → ``[B, P, D]`` (``y_t[m(p)]``)."""
    flat = features.flatten(2).transpose(1, 2)
    return flat.gather(1, index[..., None].expand(-1, -1, flat.shape[-1]))
