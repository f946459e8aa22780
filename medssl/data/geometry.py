"""2D views that remember where they came from, for losses that match feature-map cells across views.

LVM-Med's local cost compares cell ``p`` of view ``s`` with ``m(p)``, the cell of view ``t`` that lies
closest to it once both crops are mapped back to the original image. So each view records its
geometry as a fixed-size float tensor (it collates like any other tensor):

    geometry = (top, left, height, width, flip, rot, orig_h, orig_w)            # GEOMETRY_SIZE = 8

``top``/``height`` are in units of the original height and ``left``/``width`` of the original width
(the crop box in normalised coordinates); ``flip`` is 1 when the crop was mirrored left-right; ``rot``
is ``k`` in ``torch.rot90(view, k, dims=(-2, -1))``, applied after the flip; ``orig_h``/``orig_w`` are
the original size in pixels, for distances in pixels on non-square images.

Points are ``(y, x)`` in normalised original-image coordinates: pixel ``(i, j)`` of an ``H × W``
image covers ``[i/H, (i+1)/H] × [j/W, (j+1)/W]``, the convention of ``F.interpolate(...,
align_corners=False)``. Feature-map cells are flattened row-major (``features.flatten(-2)``).

Random draws come from torch's global generator, as in :mod:`medssl.data.transforms`, so
:func:`medssl.data.seeding.seeded` fixes them per (seed, epoch, sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from medssl.data.transforms import ColorJitterd, Compose, HEDJitterd, RandGaussianBlurd, sample_crop, to_float

GEOMETRY_SIZE = 8
TOP, LEFT, HEIGHT, WIDTH, FLIP, ROT, ORIG_H, ORIG_W = range(GEOMETRY_SIZE)

DictTransform = Callable[[dict], dict]


def make_geometry(top: int, left: int, crop_h: int, crop_w: int, flip: bool, rot: int, h: int, w: int) -> torch.Tensor:
    """The geometry tensor (layout in the module docstring) of a pixel crop box, flip and rotation."""
    return torch.tensor([top / h, left / w, crop_h / h, crop_w / w, float(flip), float(rot % 4), h, w], dtype=torch.float32)


def render_view(image: torch.Tensor, geometry: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Crop ``image`` ``[C, H, W]`` with the box of ``geometry``, resize (bilinear, antialiased) to
    ``size`` (the size before rotation), flip, rotate: the deterministic half of a geometric view, so
    tests and callers can reproduce a view from its record."""
    _, h, w = image.shape
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    top, left = round(float(geometry[TOP]) * h), round(float(geometry[LEFT]) * w)
    ch, cw = round(float(geometry[HEIGHT]) * h), round(float(geometry[WIDTH]) * w)
    crop = to_float(image)[None, :, top : top + ch, left : left + cw]
    view = crop[0] if (ch, cw) == size else F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    if geometry[FLIP] > 0.5:
        view = view.flip(-1)
    return torch.rot90(view, int(geometry[ROT]) % 4, dims=(-2, -1))


def _plain(x: torch.Tensor) -> torch.Tensor:
    """MONAI's MetaTensor → plain tensor, so views collate without metadata."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class RandGeometricViewd:
    """Random resized crop + horizontal flip (p = ``flip_prob``) + optional rot90, then ``photometric``
    (dictionary transforms such as ``ColorJitterd`` or MONAI intensity transforms); writes the view to
    ``key`` and its geometry (``[8]`` float32) to ``geometry_key``.

    ``rotate`` suits histology (no preferred orientation); leave it off for radiology, where anatomy
    has one. Rotation needs a square ``size``.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale=(0.2, 1.0),
        ratio=(3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        rotate: bool = False,
        photometric: DictTransform | Sequence[DictTransform] | None = None,
        key: str = "image",
        geometry_key: str = "geometry",
    ):
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if rotate and self.size[0] != self.size[1]:
            raise ValueError(f"rot90 needs a square view, got size {self.size}")
        self.scale, self.ratio, self.flip_prob, self.rotate = scale, ratio, flip_prob, rotate
        if photometric is not None and not callable(photometric):
            photometric = Compose(photometric)
        self.photometric = photometric
        self.key, self.geometry_key = key, geometry_key

    def draw(self, h: int, w: int) -> torch.Tensor:
        """A random geometry for an ``h × w`` image."""
        top, left, ch, cw = sample_crop(h, w, self.scale, self.ratio)
        flip = bool(torch.rand(()) < self.flip_prob)
        rot = int(torch.randint(0, 4, ())) if self.rotate else 0
        return make_geometry(top, left, ch, cw, flip, rot, h, w)

    def __call__(self, sample: dict) -> dict:
        image = sample[self.key]
        geometry = self.draw(*image.shape[-2:])
        out = dict(sample)
        out[self.key] = render_view(image, geometry, self.size)
        if self.photometric is not None:
            out = self.photometric(out)
            out[self.key] = _plain(out[self.key])
        out[self.geometry_key] = geometry
        return out


class GeometricViewsd:
    """``{"views": [v_1, ...], "geometry": [g_1, ...]}`` plus the sample's other keys (``image`` is
    dropped), like :class:`~medssl.data.transforms.MultiViewd` but keeping each view's geometry.
    ``GeometricViewsd.pair(view)`` gives LVM-Med's two views ``s`` and ``t``."""

    def __init__(self, views: Sequence[RandGeometricViewd], key: str = "image", out_key: str = "views",
                 geometry_key: str = "geometry"):
        self.views, self.key, self.out_key, self.geometry_key = list(views), key, out_key, geometry_key

    @classmethod
    def pair(cls, view: RandGeometricViewd, **kwargs) -> "GeometricViewsd":
        return cls([view, view], **kwargs)

    def __call__(self, sample: dict) -> dict:
        out = {k: v for k, v in sample.items() if k != self.key}
        results = [view({view.key: sample[self.key]}) for view in self.views]
        out[self.out_key] = [r[view.key] for r, view in zip(results, self.views)]
        out[self.geometry_key] = [r[view.geometry_key] for r, view in zip(results, self.views)]
        return out


def histology_geometric_view(size: int = 224, scale=(0.2, 1.0), blur_prob: float = 0.5) -> RandGeometricViewd:
    """:func:`~medssl.data.transforms.histology_view` with its geometry recorded (RGB tiles)."""
    return RandGeometricViewd(
        size, scale=scale, rotate=True,
        photometric=[ColorJitterd(prob=0.8), HEDJitterd(prob=0.5), RandGaussianBlurd(prob=blur_prob)],
    )


def radiology_geometric_view(size: int | Sequence[int] = 224, scale=(0.4, 1.0)) -> RandGeometricViewd:
    """A 2D radiology view ``[1, H, W]`` with its geometry: crop and left-right flip (no rotation),
    then intensity scale, shift and Gaussian noise (MONAI transforms, reseeded by ``seeded``/``seed_worker``)."""
    from monai.transforms import RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd

    return RandGeometricViewd(
        size, scale=scale, rotate=False,
        photometric=[
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            RandGaussianNoised("image", std=0.05, prob=0.5),
        ],
    )


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
