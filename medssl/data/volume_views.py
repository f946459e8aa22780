"""Two views of one 3D window for the joint 2D/3D method (Nguyen et al., AAAI 2023), drawn afresh for
every sample and every epoch.

:class:`VolumeViewsd` cuts ONE random window of ``spatial_size`` (D, H, W) from a slice stack, then makes
each view with its own random subset of ``transforms_per_view`` transforms from a pool of seven 3D
transforms (:data:`VOLUME_VIEW_TRANSFORMS`). The views' subsets are disjoint: consecutive parts of one
random permutation of the pool, so with one transform per view this is the reference code's "two
different transforms sampled without replacement".

Slice correspondence: both views come from the same window, and no transform moves content from one
slice index to another. Flips are in-plane only (a flip along the slice axis would pair slice k of one
view with slice D-1-k of the other), the affine rotates about the slice axis and scales in-plane, and
down-up sampling along the slice axis resamples back onto the same slice grid. So slice k of every view
shows the same anatomy, which the slice-level (intra) loss relies on.

The reference code cached the augmented views, so every epoch after the first saw the same pair. Here
nothing is cached: every draw (window, subsets, each transform's parameters) comes from MONAI random
states that :meth:`VolumeViewsd.set_random_state` derives from one seed, which
:func:`medssl.data.seeding.seeded` sets from (seed, epoch, index) for each sample.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

# from their modules: monai.transforms does not re-export its names to type checkers
from monai.transforms.compose import OneOf
from monai.transforms.croppad.dictionary import RandSpatialCropd, SpatialPadd
from monai.transforms.intensity.dictionary import (
    RandAdjustContrastd,
    RandBiasFieldd,
    RandGaussianNoised,
    RandGaussianSmoothd,
)
from monai.transforms.spatial.dictionary import RandAffined, RandFlipd
from monai.transforms.transform import MapTransform, Randomizable
from monai.utils.misc import MAX_SEED, get_seed

from medssl.errors import MedsslError

#: the pool, in the reference's order (torchio's RandomFlip, RandomAffine, RandomAnisotropy,
#: RandomNoise, RandomBlur, RandomBiasField, RandomGamma)
VOLUME_VIEW_TRANSFORMS = ("flip", "affine", "anisotropy", "noise", "blur", "bias_field", "gamma")


def _plain(image: Any) -> torch.Tensor:
    """A float32 torch tensor without MONAI metadata (MetaTensor tracking is of no use past the views)."""
    tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    return tensor.float()


def down_up(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """``image [C, *spatial]`` averaged down by ``factor`` along spatial ``axis`` (a thick-slice
    acquisition), then linearly interpolated back to its shape on the same grid (half-voxel aligned)."""
    x = _plain(image)[None]
    size = list(x.shape[2:])
    low = list(size)
    low[axis] = max(1, round(size[axis] / factor))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(F.interpolate(x, size=low, mode="area"), size=size, mode=mode, align_corners=False)[0]


class RandAnisotropyd(Randomizable, MapTransform):
    """Down-up sampling along one random spatial axis from ``axes`` by a factor drawn from
    ``downsampling`` (torchio's RandomAnisotropy). MONAI's RandSimulateLowResolutiond zooms every axis
    by the same factor, so it cannot simulate thick slices or a low in-plane resolution on one axis."""

    def __init__(
        self,
        keys: Sequence[str] | str,
        axes: Sequence[int] = (0, 1, 2),
        downsampling: tuple[float, float] = (1.5, 5.0),
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.axes, self.downsampling = tuple(int(a) for a in axes), downsampling
        self.axis, self.factor = self.axes[0], 1.0

    def randomize(self, data: Any = None) -> None:
        self.axis = int(self.R.choice(self.axes))
        self.factor = float(self.R.uniform(*self.downsampling))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = down_up(out[key], self.axis, self.factor)
        return out


class RandomDictTransform(Protocol):
    """What the pool holds: a MONAI random dictionary transform (seeded through ``set_random_state``)."""

    def __call__(self, data: Any, /) -> Any: ...

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Any: ...


def _flip(keys: list[str]) -> RandomDictTransform:
    # in-plane only (spatial axes 1 = Y, 2 = X): a flip along the slice axis would break slice
    # correspondence between the views
    return OneOf([RandFlipd(keys, prob=1.0, spatial_axis=axes) for axes in (1, 2, (1, 2))])


_BUILDERS: dict[str, Callable[[list[str]], RandomDictTransform]] = {
    "flip": _flip,
    # rotation about the slice axis (rotate_range[0]; checked in the tests) up to ±15°, in-plane scaling ±10 %
    "affine": lambda keys: RandAffined(
        keys, prob=1.0, rotate_range=(0.26, 0.0, 0.0), scale_range=(0.0, 0.1, 0.1), padding_mode="zeros"
    ),
    "anisotropy": lambda keys: RandAnisotropyd(keys),
    # on the cache's z-scored intensities: torchio's default noise std (0, 0.25)
    "noise": lambda keys: RandGaussianNoised(keys, prob=1.0, std=0.25),
    "blur": lambda keys: RandGaussianSmoothd(
        keys, prob=1.0, sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5), sigma_z=(0.25, 1.5)
    ),
    "bias_field": lambda keys: RandBiasFieldd(keys, prob=1.0, degree=3, coeff_range=(0.0, 0.1)),
    # torchio's default log-gamma range (-0.3, 0.3)
    "gamma": lambda keys: RandAdjustContrastd(keys, prob=1.0, gamma=(0.74, 1.35)),
}


def view_transform(name: str, keys: Sequence[str] = ("image",)) -> RandomDictTransform:
    """The pool's transform ``name`` (one of :data:`VOLUME_VIEW_TRANSFORMS`) on ``keys``, always applied."""
    if name not in _BUILDERS:
        raise MedsslError(f"unknown view transform {name!r}: choose from {', '.join(VOLUME_VIEW_TRANSFORMS)}")
    return _BUILDERS[name](list(keys))


class VolumeViewsd(Randomizable, MapTransform):
    """``{"views": [view_1, ..., view_n], "view_transforms": ["flip+noise", ...], ...}`` from a sample
    with ``image [1, Z, Y, X]``: one random window of ``spatial_size`` (zero-padded first where the stack
    is smaller; ``label`` too when present), then per view a disjoint random subset of
    ``transforms_per_view`` names from ``transforms`` (default: all of :data:`VOLUME_VIEW_TRANSFORMS`),
    applied in the drawn order. Each view is float32 ``[1, D, H, W]``.

    ``keep_image``: keep the un-augmented window under ``image`` (a third volume's worth of memory per
    sample; useful to look at, and for slice-level checks), or drop it.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] = (64, 128, 128),
        transforms_per_view: int = 2,
        transforms: Sequence[str] | None = None,
        views: int = 2,
        key: str = "image",
        out_key: str = "views",
        keep_image: bool = True,
    ):
        MapTransform.__init__(self, [key])
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 3 or min(self.spatial_size) < 1:
            raise MedsslError(f"spatial_size must be 3 positive sizes (D, H, W), got {list(spatial_size)}")
        names = tuple(VOLUME_VIEW_TRANSFORMS if transforms is None else transforms)
        self.pool = {name: view_transform(name, [key]) for name in names}  # refuses an unknown name
        if len(set(names)) != len(names):
            raise MedsslError(f"view transforms listed twice in {list(names)}")
        if views < 1 or transforms_per_view < 1 or views * transforms_per_view > len(names):
            raise MedsslError(
                f"{views} views × {transforms_per_view} transforms per view need that many distinct transforms, "
                f"but the pool has {len(names)} ({', '.join(names)}): lower transforms_per_view or add transforms"
            )
        self.key, self.out_key, self.keep_image = key, out_key, keep_image
        self.views, self.transforms_per_view, self.names = views, transforms_per_view, names
        window_keys = [key, "label"]
        self.pad = SpatialPadd(window_keys, self.spatial_size, allow_missing_keys=True)
        self.crop = RandSpatialCropd(window_keys, self.spatial_size, random_size=False, allow_missing_keys=True)
        self.chosen: list[tuple[str, ...]] = []
        self.set_random_state(seed=get_seed())

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> VolumeViewsd:
        """Seed this transform, then the window crop and every pool transform from it (as MONAI's
        Compose does), so one seed fixes every draw of a sample."""
        super().set_random_state(seed=seed, state=state)
        for inner in (self.crop, *self.pool.values()):
            inner.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:
        order = self.R.permutation(len(self.names))
        k = self.transforms_per_view
        self.chosen = [tuple(self.names[i] for i in order[v * k : (v + 1) * k]) for v in range(self.views)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        out: dict[Hashable, Any] = dict(self.crop(self.pad(dict(data))))
        window = out[self.key]
        views = []
        for names in self.chosen:
            view = {self.key: window}
            for name in names:
                view = self.pool[name](view)
            views.append(_plain(view[self.key]))
        if self.keep_image:
            out[self.key] = _plain(window)
        else:
            del out[self.key]
        if "label" in out:
            out["label"] = _plain(out["label"]).long()
        out[self.out_key] = views
        out["view_transforms"] = ["+".join(names) for names in self.chosen]
        return out
