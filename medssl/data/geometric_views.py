"""Views of 2D images and 3D volumes that remember where they came from, for losses that match
feature-map cells (or voxels) across views.

Each view records its crop box, flips and rotation as a geometry tensor (layout in
:mod:`medssl.geometry`, which maps view points back to the original image), so LVM-Med's local cost
can pair cell ``p`` of one view with the cell of the other view that lies closest to it, and dense 3D
methods can pair the voxels of two crops that show the same place.

Images are ``[C, H, W]`` (2D) or ``[C, D, H, W]`` (3D); a view has the dimensionality of its image.
Random draws come from torch's global generator, as in :mod:`medssl.data.transforms`, so
:func:`medssl.data.seeding.seeded` fixes them per (seed, epoch, sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch

from medssl.data.batched_ops import render_view, render_views, view_sizes
from medssl.data.radiology_ops import RandGaussianNoise, RandScaleIntensity, RandShiftIntensity
from medssl.data.transforms import histology_photometric, sample_crop
from medssl.data.view_ops import VIEW_PARAMS, Compose, DeviceViews, Params, ViewOp, is_device_capable
from medssl.geometry import fields, make_geometry

DictTransform = Callable[[dict], dict]


def sample_box(shape: Sequence[int], scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(start, size)`` in pixels/voxels of a random crop box of an image of spatial ``shape``, from
    torch's generator.

    2D: :func:`~medssl.data.transforms.sample_crop` (``scale`` of the area, aspect width/height in
    ``ratio``), the same draws in the same order. ``n``-D: ``scale`` of the volume; each side's log-length
    is the cube's plus an independent offset uniform in ``[log r0, log r1] / 2``, recentred so the volume
    is kept, so for a symmetric ``ratio`` such as the default any two sides differ by at most that
    ratio. 10 tries, then a cube of the shortest side. Sides are in voxels: on anisotropic spacing the
    box is anisotropic in millimetres.
    """
    n = len(shape)
    if n == 2:
        top, left, ch, cw = sample_crop(shape[0], shape[1], scale, ratio)
        return (top, left), (ch, cw)
    low, high = math.log(ratio[0]) / 2, math.log(ratio[1]) / 2
    for _ in range(10):
        side = (math.prod(shape) * float(torch.empty(()).uniform_(*scale))) ** (1 / n)
        offsets = torch.empty(n, dtype=torch.float64).uniform_(low, high)
        offsets = (offsets - offsets.mean()).tolist()
        size = tuple(round(side * math.exp(o)) for o in offsets)
        if all(0 < c <= d for c, d in zip(size, shape, strict=True)):
            break
    else:
        size = (min(shape),) * n
    start = tuple(int(torch.randint(0, d - c + 1, ())) for d, c in zip(shape, size, strict=True))
    return start, size


def sample_side_box(shape: Sequence[int], scale=(0.4, 1.0)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(start, size)`` of a random box whose every side is a uniform whole number of pixels/voxels in
    ``[max(1, int(scale[0]·d)), max(1, int(scale[1]·d))]`` of that axis's ``d``, at a uniform position:
    MONAI's ``RandSpatialCrop(roi_size=int(scale[0]·d), random_size=True)`` (sides drawn first, in axis
    order, then starts), from torch's generator."""
    size = []
    for d in shape:
        low, high = max(1, int(scale[0] * d)), max(1, min(d, int(scale[1] * d)))
        size.append(int(torch.randint(low, high + 1, ())))
    start = tuple(int(torch.randint(0, d - c + 1, ())) if d > c else 0 for d, c in zip(shape, size, strict=True))
    return start, tuple(size)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """MONAI's MetaTensor → plain tensor, so views collate without metadata."""
    as_tensor = getattr(x, "as_tensor", None)  # MONAI is imported only where its transforms are used
    return cast(torch.Tensor, as_tensor()) if callable(as_tensor) else x


class RandGeometricViewd(ViewOp):
    """Random resized crop + flips + optional rot90, then ``photometric`` (dictionary transforms such as
    ``ColorJitterd`` or MONAI intensity transforms); writes the view to ``key`` and its geometry
    (``[4n + 1]`` float32, :mod:`medssl.geometry`) to ``geometry_key``.

    Works on 2D images ``[C, H, W]`` and 3D volumes ``[C, D, H, W]``; an ``int`` ``size`` is the side
    along every axis, a sequence gives one per axis and fixes the dimensionality. The crop box follows
    :func:`sample_box` (``scale`` of the area or volume, sides within ``ratio``), or with ``box="sides"``
    :func:`sample_side_box` (each side ``scale`` of the image's, MONAI's ``RandSpatialCrop`` with a random
    size; ``ratio`` unused). ``flip_prob``: a float is
    the probability of a left-right flip (the last axis; one draw), a sequence one probability per axis
    (one draw per axis, in axis order). ``rotate`` (``rot90`` in the last two axes, the axial plane of a
    volume) suits histology (no preferred orientation); leave it off for radiology, where anatomy has
    one. Rotation needs a square ``H × W`` size. Draws: crop box, flips, rotation.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale=(0.2, 1.0),
        ratio=(3 / 4, 4 / 3),
        flip_prob: float | Sequence[float] = 0.5,
        rotate: bool = False,
        photometric: DictTransform | Sequence[DictTransform] | None = None,
        key: str = "image",
        geometry_key: str = "geometry",
        box: str = "area",
    ):
        if box not in ("area", "sides"):
            raise ValueError(f"box must be 'area' or 'sides', got {box!r}")
        self.box = box
        self.size = int(size) if isinstance(size, int) else tuple(int(s) for s in size)
        if isinstance(self.size, tuple) and len(self.size) not in (2, 3):
            raise ValueError(f"a 2D (H, W) or 3D (D, H, W) view size, got {self.size}")
        if rotate and isinstance(self.size, tuple) and self.size[-2] != self.size[-1]:
            raise ValueError(f"rot90 needs a square H × W view, got size {self.size}")
        if not isinstance(flip_prob, (int, float)):
            flip_prob = tuple(float(p) for p in flip_prob)
            if isinstance(self.size, tuple) and len(flip_prob) != len(self.size):
                raise ValueError(f"flip_prob {flip_prob} needs one probability per axis of size {self.size}")
        self.scale, self.ratio, self.flip_prob, self.rotate = scale, ratio, flip_prob, rotate
        if photometric is not None and not callable(photometric):
            photometric = Compose(photometric)
        self.photometric = photometric
        self.key, self.geometry_key = key, geometry_key

    def draw_geometry(self, *shape: int) -> torch.Tensor:
        """A random geometry for an image of spatial ``shape`` (``h, w`` or ``d, h, w``)."""
        n = len(shape)
        if isinstance(self.size, tuple) and len(self.size) != n:
            raise ValueError(f"a {len(self.size)}-D view size {self.size} for a {n}-D image of shape {shape}")
        if self.box == "sides":
            start, size = sample_side_box(shape, self.scale)
        else:
            start, size = sample_box(shape, self.scale, self.ratio)
        if isinstance(self.flip_prob, tuple):
            if len(self.flip_prob) != n:
                raise ValueError(f"flip_prob {self.flip_prob} needs one probability per axis of a {n}-D image")
            flip = [bool(torch.rand(()) < p) for p in self.flip_prob]
        else:
            flip = [False] * (n - 1) + [bool(torch.rand(()) < self.flip_prob)]
        rot = int(torch.randint(0, 4, ())) if self.rotate else 0
        return make_geometry(start, size, shape, flip, rot)

    def __call__(self, sample: dict) -> dict:
        image = sample[self.key]
        geometry = self.draw_geometry(*image.shape[1:])
        out = dict(sample)
        out[self.key] = render_view(image, geometry, self.size)
        if self.photometric is not None:
            out = self.photometric(out)
            out[self.key] = _plain(out[self.key])
        out[self.geometry_key] = geometry
        return out

    # -- as a ViewOp: the crop's geometry, then the photometric steps' parameters ----------------------
    def _photometric(self) -> Compose:
        steps = [] if self.photometric is None else [self.photometric]
        return Compose(steps, key=self.key)

    def draw(self, shape: tuple[int, ...]) -> Params:
        geometry = self.draw_geometry(*shape)
        params = {"geometry": geometry}
        params.update({f"photometric.{k}": v for k, v in self._photometric().draw(self.out_shape(shape)).items()})
        return params

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return view_sizes(self.size, len(shape))

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        view = render_view(image, params["geometry"], self.size)
        return self._photometric().apply(view, _inner(params))

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        views = render_views(images, on_canvas(params["geometry"], images.shape[2:]), self.size)
        return self._photometric().apply_batch(views, _inner(params))


def on_canvas(geometry: torch.Tensor, canvas: Sequence[int]) -> torch.Tensor:
    """Geometry records ``[B, 4n + 1]`` of images that were zero-padded at the end into a ``canvas``
    (spatial shape; a batch of images of several sizes): the same pixel boxes as fractions of the
    canvas, what :func:`~medssl.data.batched_ops.render_views` reads; unchanged for images of the
    canvas's size."""
    f = fields(geometry)
    shape = torch.tensor([float(d) for d in canvas], dtype=geometry.dtype, device=geometry.device)
    ratio = f.shape / shape
    return torch.cat([f.start * ratio, f.size * ratio, f.flip, f.rot, shape.expand_as(f.shape)], dim=-1)


def _inner(params: Params) -> Params:
    return {k.removeprefix("photometric."): v for k, v in params.items() if k.startswith("photometric.")}


class GeometricViewsd(DeviceViews):
    """``{"views": [v_1, ...], "geometry": [g_1, ...]}`` plus the sample's other keys (``image`` is
    dropped), like :class:`~medssl.data.transforms.MultiViewd` but keeping each view's geometry.
    ``GeometricViewsd.pair(view)`` gives LVM-Med's two views ``s`` and ``t``. Runs as device views too
    (:class:`~medssl.data.view_ops.DeviceViews`) when every view's photometric steps are ViewOps."""

    def __init__(
        self,
        views: Sequence[RandGeometricViewd],
        key: str = "image",
        out_key: str = "views",
        geometry_key: str = "geometry",
    ):
        self.views, self.key, self.out_key, self.geometry_key = list(views), key, out_key, geometry_key

    @classmethod
    def pair(cls, view: RandGeometricViewd, **kwargs) -> "GeometricViewsd":
        return cls([view, view], **kwargs)

    def __call__(self, sample: dict) -> dict:
        out = {k: v for k, v in sample.items() if k != self.key}
        results = [view({view.key: sample[self.key]}) for view in self.views]
        out[self.out_key] = [r[view.key] for r, view in zip(results, self.views, strict=True)]
        out[self.geometry_key] = [r[view.geometry_key] for r, view in zip(results, self.views, strict=True)]
        return out

    def draw_sample(self, sample: dict) -> dict:
        for view in self.views:
            if not is_device_capable(view._photometric()):
                raise TypeError("device views need photometric steps that are medssl ViewOps: use views_on='cpu'")
        out = dict(sample)
        out[VIEW_PARAMS] = [view.draw(tuple(sample[self.key].shape[1:])) for view in self.views]
        return out

    def apply_batch(self, batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k not in (self.key, VIEW_PARAMS)}
        images, params = batch[self.key], batch[VIEW_PARAMS]
        out[self.out_key] = [view.apply_batch(images, p) for view, p in zip(self.views, params, strict=True)]
        out[self.geometry_key] = [p["geometry"] for p in params]
        return out


def histology_geometric_view(
    size: int = 224, scale=(0.2, 1.0), blur_prob: float = 0.5, grey_prob: float = 0.0, solarize_prob: float = 0.0
) -> RandGeometricViewd:
    """:func:`~medssl.data.transforms.histology_view` with its geometry recorded (RGB tiles): crop, a
    left-right flip, ``rot90``, then :func:`~medssl.data.transforms.histology_photometric`'s steps."""
    return RandGeometricViewd(
        size,
        scale=scale,
        rotate=True,
        photometric=histology_photometric(blur_prob, grey_prob, solarize_prob),
    )


def radiology_geometric_view(
    size: int | Sequence[int] = 224, scale=(0.4, 1.0), flip_prob: float | Sequence[float] = 0.5
) -> RandGeometricViewd:
    """A radiology view of a slice ``[1, H, W]`` or a volume ``[1, D, H, W]`` with its geometry: crop
    (``scale`` of the area or volume) and flips (left-right by default; ``flip_prob`` per axis), no
    rotation, then intensity scale, shift and Gaussian noise (:mod:`medssl.data.radiology_ops`, MONAI's
    ``RandScaleIntensity``/``RandShiftIntensity``/``RandGaussianNoise`` as ViewOps, so the view also
    runs as device views)."""
    return RandGeometricViewd(
        size,
        scale=scale,
        flip_prob=flip_prob,
        rotate=False,
        photometric=[
            RandScaleIntensity(0.1, prob=0.5),
            RandShiftIntensity(0.1, prob=0.5),
            RandGaussianNoise(std=0.05, prob=0.5),
        ],
    )
