"""Multi-view augmentations for histology tiles, as MONAI-style dictionary transforms on tensors.

Each transform takes and returns a sample dictionary and changes ``keys`` (default ``"image"``), a
``[3, H, W]`` tensor (uint8 0..255 or float 0..1). Randomness comes from torch's global generator,
which DataLoader seeds per worker and per epoch, so views differ between epochs and a fixed
``torch.manual_seed`` reproduces them. No torchvision: everything is plain torch.

Radiology views (:func:`radiology_view`) are built from :mod:`medssl.data.radiology_ops`.

``MultiViewd`` turns one sample into several augmented views under ``"views"`` (SimCLR's two views,
or DINO/SwAV multi-crop with global and local crops).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F

from medssl.data.radiology_ops import (
    PadOrCropd,
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
)
from medssl.data.view_ops import VIEW_PARAMS, Compose, DeviceViews, ViewOp, is_device_capable
from medssl.nn.inputs import to_float

# Ruifrok & Johnston's H&E-DAB stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image uses.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """Colour deconvolution of ``[3, H, W]`` RGB (0..1) into stain densities (H, E, DAB), unclipped."""
    density = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST
    return torch.einsum("chw,cd->dhw", density, HED_FROM_RGB.to(rgb.dtype))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hed`."""
    log_rgb = torch.einsum("dhw,dc->chw", hed, RGB_FROM_HED.to(hed.dtype)) * _LOG_ADJUST
    return torch.exp(log_rgb).clamp(0.0, 1.0)


def _uniform(low: float, high: float, size=()) -> torch.Tensor:
    return torch.empty(size).uniform_(low, high)


class _Transform:
    """Applies ``self.apply`` to each key with probability ``prob``."""

    def __init__(self, keys: Sequence[str] | str = "image", prob: float = 1.0):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.prob = prob

    def __call__(self, sample: dict) -> dict:
        if self.prob < 1.0 and torch.rand(()) >= self.prob:
            return sample
        out = dict(sample)
        for key in self.keys:
            out[key] = self.apply(to_float(sample[key]))
        return out

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def sample_crop(h: int, w: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(top, left, crop_h, crop_w)`` in pixels of a random crop covering ``scale`` of the area with aspect
    (width / height) in ``ratio`` (10 tries, then a square of the short side), from torch's generator."""
    for _ in range(10):
        area = h * w * float(_uniform(*scale))
        aspect = math.exp(float(_uniform(math.log(ratio[0]), math.log(ratio[1]))))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = min(h, w), min(h, w)
    top, left = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
    return top, left, ch, cw


class RandResizedCropd(_Transform):
    """A random crop of ``scale`` of the area and ``ratio`` aspect, resized (antialiased) to ``size``."""

    def __init__(self, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), **kwargs):
        super().__init__(**kwargs)
        self.size, self.scale, self.ratio = size, scale, ratio

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        top, left, ch, cw = sample_crop(h, w, self.scale, self.ratio)
        crop = image[None, :, top : top + ch, left : left + cw]
        return F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)[0]


class RandFlipRotate90d(_Transform):
    """One of the 8 symmetries of the square: histology has no preferred orientation."""

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return torch.rot90(image, int(torch.randint(0, 4, ())), dims=(-2, -1))


class ColorJitterd(_Transform):
    """Brightness, contrast and saturation factors in ``1 ± strength``, and a hue rotation of up to
    ``hue`` turns (in YIQ space, where a hue shift is a rotation of the chroma plane), in random order."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.05, **kwargs):
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        for step in torch.randperm(4).tolist():
            if step == 0 and self.brightness:
                image = image * float(_uniform(1 - self.brightness, 1 + self.brightness))
            elif step == 1 and self.contrast:
                mean = _grey(image).mean()
                image = (image - mean) * float(_uniform(1 - self.contrast, 1 + self.contrast)) + mean
            elif step == 2 and self.saturation:
                grey = _grey(image)[None]
                image = (image - grey) * float(_uniform(1 - self.saturation, 1 + self.saturation)) + grey
            elif step == 3 and self.hue:
                image = _rotate_hue(image, float(_uniform(-self.hue, self.hue)) * 2 * math.pi)
            image = image.clamp(0.0, 1.0)
        return image


def _grey(image: torch.Tensor) -> torch.Tensor:
    return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(image: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    matrix = torch.linalg.inv(_RGB_TO_YIQ) @ rotate @ _RGB_TO_YIQ
    return torch.einsum("ij,jhw->ihw", matrix.to(image.dtype), image)


class HEDJitterd(_Transform):
    """Stain augmentation (Tellez et al. 2018): in H&E-DAB density space, each stain channel becomes
    ``density × U(1 - sigma, 1 + sigma) + U(-bias, bias)``, so colour varies the way staining does."""

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.sigma, self.bias = sigma, bias

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        hed = rgb_to_hed(image)
        alpha = _uniform(1 - self.sigma, 1 + self.sigma, (3, 1, 1)).to(hed.dtype)
        beta = _uniform(-self.bias, self.bias, (3, 1, 1)).to(hed.dtype)
        return hed_to_rgb(hed * alpha + beta)


class RandGaussianBlurd(_Transform):
    """Gaussian blur with sigma drawn from ``sigma`` (pixels): out-of-focus scanning."""

    def __init__(self, sigma=(0.1, 2.0), **kwargs):
        super().__init__(**kwargs)
        self.sigma = sigma

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        sigma = float(_uniform(*self.sigma))
        radius = max(1, math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=image.dtype)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]


def histology_view(size: int = 224, scale=(0.2, 1.0), blur_prob: float = 0.5) -> Compose:
    """The standard histology SSL view: crop, symmetries, colour and stain jitter, blur."""
    return Compose(
        [
            RandResizedCropd(size, scale=scale),
            RandFlipRotate90d(),
            ColorJitterd(prob=0.8),
            HEDJitterd(prob=0.5),
            RandGaussianBlurd(prob=blur_prob),
        ]
    )


class MultiViewd(DeviceViews):
    """``{"views": [view_1(sample)["image"], ...]}`` plus the sample's other keys; ``image`` is dropped.

    ``MultiViewd([histology_view()] * 2)`` gives SimCLR's pair; ``MultiViewd.multi_crop(2, 6)`` gives two
    global 224² views and six local 96² views (DINO/SwAV multi-crop). ``prepare``: a deterministic
    dictionary transform run first (e.g. padding to a common size). With views made of
    :class:`~medssl.data.view_ops.ViewOp` s it also runs as device views
    (:class:`~medssl.data.view_ops.DeviceViews`): the loader draws, the device applies per batch.
    """

    def __init__(
        self,
        views: Sequence[Callable[[dict], dict]],
        key: str = "image",
        out_key: str = "views",
        prepare: Callable[[dict], dict] | None = None,
    ):
        self.views, self.key, self.out_key, self.prepare = list(views), key, out_key, prepare

    def __call__(self, sample: dict) -> dict:
        if self.prepare is not None:
            sample = self.prepare(sample)
        out = {k: v for k, v in sample.items() if k != self.key}
        out[self.out_key] = [view({self.key: sample[self.key]})[self.key] for view in self.views]
        return out

    def _view_ops(self) -> list[ViewOp]:
        if not all(is_device_capable(view) for view in self.views):
            names = ", ".join(sorted({type(v).__name__ for v in self.views if not is_device_capable(v)}))
            raise TypeError(f"device views need medssl ViewOps; {names} is not one: use views_on='cpu'")
        return cast(list[ViewOp], self.views)

    def draw_sample(self, sample: dict) -> dict:
        if self.prepare is not None:
            sample = self.prepare(sample)
        shape = tuple(sample[self.key].shape[1:])
        out = dict(sample)
        out[VIEW_PARAMS] = [view.draw(shape) for view in self._view_ops()]
        return out

    def apply_batch(self, batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k not in (self.key, VIEW_PARAMS)}
        images = batch[self.key]
        out[self.out_key] = [
            view.apply_batch(images, params) for view, params in zip(self._view_ops(), batch[VIEW_PARAMS], strict=True)
        ]
        return out

    @classmethod
    def multi_crop(
        cls, n_global: int = 2, n_local: int = 6, global_size: int = 224, local_size: int = 96
    ) -> "MultiViewd":
        return cls(
            [histology_view(global_size, scale=(0.4, 1.0))] * n_global
            + [histology_view(local_size, scale=(0.05, 0.4), blur_prob=0.2)] * n_local
        )


def radiology_view(
    spatial_size: Sequence[int],
    keys: Sequence[str] = ("image",),
    blur_prob: float = 0.0,
    blur_sigma: tuple[float, float] = (0.5, 1.0),
    gamma_prob: float = 0.0,
    gamma: tuple[float, float] = (0.7, 1.5),
) -> Compose:
    """A radiology SSL view of a 2D slice ``[1, H, W]`` or a 3D patch ``[1, D, H, W]`` (``spatial_size``
    has 2 or 3 entries): a random crop of 40-100 % of each side (each side uniform, MONAI's
    ``RandSpatialCrop(random_size=True)``) resized to ``spatial_size``; with probability 0.5 a rotation
    of up to ±0.2 rad (3D: about each axis) and a scaling by 1 ± 0.1 along each axis; then, if their
    probabilities are set, a Gaussian blur (``blur_sigma`` pixels per axis) and a gamma contrast change
    (``gamma``); intensity scale and shift by ±0.1 and Gaussian noise (σ up to 0.05), 0.5 each.

    Every step is a :class:`~medssl.data.view_ops.ViewOp` (:mod:`medssl.data.radiology_ops`), so the
    view runs per sample or as device views; draws come from torch's generator. Pair it with
    :func:`radiology_views` (or ``MultiViewd(prepare=PadOrCropd(spatial_size))``), which pads or crops
    the image to ``spatial_size`` first, as MONAI's ``ResizeWithPadOrCrop`` did.

    What changed from the MONAI chain this replaces: the crop is resized linearly (antialiased when
    shrinking) instead of by ``"area"`` interpolation, which is blocky when it enlarges a crop; the
    scaling covers every axis (MONAI's ``scale_range=0.1`` scaled only the first).
    """
    from medssl.data.geometric_views import RandGeometricViewd  # it builds on this module

    if len(keys) != 1:
        raise ValueError(f"a radiology view transforms one image key, got {list(keys)}")
    key = keys[0]
    size = tuple(int(s) for s in spatial_size)
    if len(size) not in (2, 3):
        raise ValueError(f"a 2D (H, W) or 3D (D, H, W) spatial_size, got {size}")
    ndim = len(size)
    steps: list[ViewOp] = [
        RandGeometricViewd(size, scale=(0.4, 1.0), box="sides", flip_prob=0.0, key=key),
        RandAffine(rotate_range=(0.2,) * (1 if ndim == 2 else 3), scale_range=(0.1,) * ndim, prob=0.5, key=key),
    ]
    if blur_prob > 0:
        steps.append(RandGaussianSmooth(blur_sigma, blur_sigma, blur_sigma, prob=blur_prob, key=key))
    if gamma_prob > 0:
        steps.append(RandAdjustContrast(gamma, prob=gamma_prob, key=key))
    steps += [
        RandScaleIntensity(0.1, prob=0.5, key=key),
        RandShiftIntensity(0.1, prob=0.5, key=key),
        RandGaussianNoise(std=0.05, prob=0.5, key=key),
    ]
    return Compose(steps, key=key)


def radiology_views(
    spatial_size: Sequence[int], views: int = 2, dtype: torch.dtype | None = None, **options
) -> MultiViewd:
    """``views`` :func:`radiology_view` s (``options`` passed on) of each sample, after padding or
    cropping its image to ``spatial_size`` (and casting it to ``dtype``, if given:
    :class:`~medssl.data.radiology_ops.PadOrCropd`); runs either way
    (:class:`~medssl.data.view_ops.DeviceViews`)."""
    view = radiology_view(spatial_size, **options)
    return MultiViewd([view] * views, prepare=PadOrCropd(spatial_size, dtype=dtype))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed MONAI's per-transform generators from the worker's torch seed
    (which DataLoader changes every epoch), so random views never repeat across workers or epochs."""
    import torch.utils.data
    from monai.data.utils import set_rnd

    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        set_rnd(transform, seed=info.seed % (2**32))
