"""2D views that remember where they came from, for losses that match feature-map cells across views.

Each view records its crop box, flip and rotation as a geometry tensor (layout in
:mod:`medssl.geometry`, which maps view points back to the original image), so LVM-Med's local cost
can pair cell ``p`` of one view with the cell of the other view that lies closest to it.

Random draws come from torch's global generator, as in :mod:`medssl.data.transforms`, so
:func:`medssl.data.seeding.seeded` fixes them per (seed, epoch, sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from medssl.data.transforms import ColorJitterd, Compose, HEDJitterd, RandGaussianBlurd, sample_crop, to_float
from medssl.geometry import FLIP, HEIGHT, LEFT, ROT, TOP, WIDTH, make_geometry

DictTransform = Callable[[dict], dict]


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
