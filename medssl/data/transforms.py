"""Multi-view augmentations for histology tiles, as MONAI-style dictionary transforms on tensors.

Each transform takes and returns a sample dictionary and changes ``keys`` (default ``"image"``), a
``[3, H, W]`` tensor (uint8 0..255 or float 0..1). Randomness comes from torch's global generator,
which DataLoader seeds per worker and per epoch, so views differ between epochs and a fixed
``torch.manual_seed`` reproduces them. No torchvision: everything is plain torch.

The histology steps are :class:`~medssl.data.view_ops.ViewOp` s (:class:`RandomViewOp`): each draws its
parameters once per sample and applies them per sample (the loader's path, and the test oracle) or
per batch on the training device (colour jitter and stain jitter as per-sample 3 × 3 colour maps,
blur as a per-sample separable filter), with the same result.

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

from medssl.data.batched_ops import gaussian_kernels, mix_channels, render_views, separable_filter
from medssl.data.radiology_ops import (
    PadOrCropd,
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
)
from medssl.data.view_ops import (
    VIEW_PARAMS,
    Compose,
    DeviceViews,
    Params,
    RandomViewOp,
    ViewOp,
    flag,
    is_device_capable,
    runs_whole_batch,
)
from medssl.geometry import make_geometry
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


class RandResizedCropd(RandomViewOp):
    """A random crop of ``scale`` of the area and ``ratio`` aspect, resized (antialiased) to ``size``.
    Its parameters are a geometry record (:mod:`medssl.geometry`; skipped: the whole image), rendered by
    :func:`~medssl.data.batched_ops.render_views`. :func:`histology_view` crops, flips and rotates in
    one step instead (:class:`~medssl.data.geometric_views.RandGeometricViewd`, the same draws)."""

    def __init__(self, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), **kwargs):
        super().__init__(**kwargs)
        self.size, self.scale, self.ratio = size, scale, ratio

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        top, left, ch, cw = sample_crop(shape[0], shape[1], self.scale, self.ratio)
        return {"geometry": make_geometry((top, left), (ch, cw), shape)}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"geometry": make_geometry((0, 0), shape, shape)}

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.size, self.size)

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return render_views(images, params["geometry"], self.size)

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        return self.transform(to_float(image), params)  # skipped: the whole image, still resized

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return self.transform_batch(images, params)


class RandFlipRotate90d(RandomViewOp):
    """One of the 8 symmetries of the square: histology has no preferred orientation. Draws: a left-right
    flip (probability 0.5), then ``k`` of ``rot90``."""

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        flip = bool(torch.rand(()) < 0.5)
        return {"flip": flag(flip), "rot": torch.randint(0, 4, ())}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"flip": flag(False), "rot": torch.tensor(0)}

    def transform(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        if bool(params["flip"]):
            image = image.flip(-1)
        return torch.rot90(image, int(params["rot"]), dims=(-2, -1))

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """A view of the whole image with the flips and turns: pixels copied, not resampled."""
        b, (h, w) = images.shape[0], images.shape[-2:]
        whole = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0], device=images.device).expand(b, -1)
        flips, rot = params["flip"].to(images.device, torch.float32), params["rot"].to(images.device, torch.float32)
        shape = torch.tensor([float(h), float(w)], device=images.device).expand(b, -1)
        geometry = torch.cat([whole, flips[:, None], rot[:, None], shape], dim=1)
        return render_views(images, geometry, (h, w))


_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601, as _grey weighs the channels
_TO_GREY = _LUMA.expand(3, 3)  # the colour map that puts the luma in every channel
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


class ColorJitterd(RandomViewOp):
    """Brightness, contrast and saturation factors in ``1 ± strength``, and a hue rotation of up to
    ``hue`` turns (in YIQ space, where a hue shift is a rotation of the chroma plane), in random order.

    Parameters: the ``order`` of the four steps and each step's ``factor`` (brightness, contrast,
    saturation, hue in turns; 1, 1, 1, 0 leave an image unchanged), drawn in that order. Every step is
    an affine colour map (contrast's offset is the image's mean grey), so a batch takes one 3 × 3 map
    per sample and position, each followed by the clamp to 0..1 the per-sample path does."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.05, **kwargs):
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def _ranges(self) -> list[tuple[float, float] | None]:
        """Each step's factor range, None for a step switched off."""
        scales = [(1 - s, 1 + s) if s else None for s in (self.brightness, self.contrast, self.saturation)]
        return [*scales, (-self.hue, self.hue) if self.hue else None]

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        order = torch.randperm(4)
        factor = self.identity(shape)["factor"]
        ranges = self._ranges()
        for step in order.tolist():
            bounds = ranges[step]
            if bounds is not None:
                factor[step] = _uniform(*bounds)
        return {"order": order, "factor": factor}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"order": torch.arange(4), "factor": torch.tensor([1.0, 1.0, 1.0, 0.0])}

    def transform(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        for step in params["order"].tolist():
            value = float(params["factor"][step])
            if step == _BRIGHTNESS and self.brightness:
                image = image * value
            elif step == _CONTRAST and self.contrast:
                mean = _grey(image).mean()
                image = (image - mean) * value + mean
            elif step == _SATURATION and self.saturation:
                grey = _grey(image)[None]
                image = (image - grey) * value + grey
            elif step == _HUE and self.hue:
                image = _rotate_hue(image, value * 2 * math.pi)
            image = image.clamp(0.0, 1.0)
        return image

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        matrices, offsets = _jitter_maps(params["order"].to(images.device), params["factor"].to(images.device))
        luma = _LUMA.to(images)
        buffers = (torch.empty_like(images), torch.empty_like(images))  # each step writes into the other
        for position in range(4):
            offset = offsets[:, position]  # (1 - factor) where this position is contrast, else 0
            bias = None
            if runs_whole_batch(images) or bool(offset.any()):
                bias = (offset * (images.mean(dim=tuple(range(2, images.ndim))) @ luma))[:, None].expand(-1, 3)
            images = mix_channels(images, matrices[:, position], bias, out=buffers[position % 2]).clamp_(0.0, 1.0)
        return images


def _jitter_maps(order: torch.Tensor, factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour jitter as maps: ``[B, 4, 3, 3]`` matrices of each sample's steps in its order, and ``[B, 4]``
    contrast offsets (``x ↦ f·x + (1 - f)·mean grey``: the matrix is ``f·I``, the offset ``1 - f``)."""
    value = factor.gather(1, order)  # [B, 4]: each position's factor
    saturation, hue = order == _SATURATION, order == _HUE
    angle = value * (2 * math.pi)
    # each map as a combination of five fixed matrices: I, _TO_GREY and _rotate_hue's three parts
    weights = torch.stack(
        [
            torch.where(hue, 0.0, value),
            torch.where(saturation, 1 - value, 0.0),
            hue.to(value.dtype),
            torch.where(hue, torch.cos(angle), 0.0),
            torch.where(hue, torch.sin(angle), 0.0),
        ],
        dim=-1,
    )
    matrices = (weights @ _JITTER_BASIS.to(value).flatten(1)).unflatten(-1, (3, 3))
    return matrices, torch.where(order == _CONTRAST, 1 - value, 0.0)


def _hue_parts() -> torch.Tensor:
    """``P0, P1, P2`` with ``_rotate_hue``'s matrix ``= P0 + cos θ · P1 + sin θ · P2`` (YIQ → rotate the
    IQ plane → RGB, split by the rotation's terms)."""
    yiq = _RGB_TO_YIQ.double()
    back = torch.linalg.inv(yiq)
    keep, chroma, turn = torch.zeros(3, 3, 3, dtype=torch.float64)
    keep[0, 0] = 1.0
    chroma[1, 1] = chroma[2, 2] = 1.0
    turn[2, 1], turn[1, 2] = 1.0, -1.0
    return torch.stack([back @ part @ yiq for part in (keep, chroma, turn)]).float()


_JITTER_BASIS = torch.cat([torch.eye(3)[None], _TO_GREY[None], _hue_parts()])  # [5, 3, 3]


def _grey(image: torch.Tensor) -> torch.Tensor:
    return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]


def _rotate_hue(image: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    matrix = torch.linalg.inv(_RGB_TO_YIQ) @ rotate @ _RGB_TO_YIQ
    return torch.einsum("ij,jhw->ihw", matrix.to(image.dtype), image)


class HEDJitterd(RandomViewOp):
    """Stain augmentation (Tellez et al. 2018): in H&E-DAB density space, each stain channel becomes
    ``density × U(1 - sigma, 1 + sigma) + U(-bias, bias)``, so colour varies the way staining does.

    Parameters: ``alpha`` and ``beta`` ``[3]`` (drawn in that order). Deconvolution, jitter and
    reconvolution are linear in log RGB, so a batch takes log, one 3 × 3 map and offset per sample, exp."""

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.sigma, self.bias = sigma, bias

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        alpha = _uniform(1 - self.sigma, 1 + self.sigma, (3,))
        return {"alpha": alpha, "beta": _uniform(-self.bias, self.bias, (3,))}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"alpha": torch.ones(3), "beta": torch.zeros(3)}

    def transform(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        hed = rgb_to_hed(image)
        alpha, beta = (params[k].to(hed.dtype)[:, None, None] for k in ("alpha", "beta"))
        return hed_to_rgb(hed * alpha + beta)

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        # log rgb' = R^T diag(alpha) H^T log rgb + L R^T beta, with R = RGB_FROM_HED, H = HED_FROM_RGB
        to_rgb, from_rgb = RGB_FROM_HED.to(images), HED_FROM_RGB.to(images)
        alpha, beta = params["alpha"].to(images), params["beta"].to(images)
        matrix = (to_rgb.T[None] * alpha[:, None, :]) @ from_rgb.T
        log_rgb = mix_channels(images.clamp_min(1e-6).log_(), matrix, _LOG_ADJUST * beta @ to_rgb)
        return log_rgb.exp_().clamp_(0.0, 1.0)


class RandGaussianBlurd(RandomViewOp):
    """Gaussian blur with sigma drawn from ``sigma`` (pixels): out-of-focus scanning. Parameter: ``sigma``
    (0 when skipped). A batch is filtered with kernels as long as the largest radius among its samples
    (the largest possible one off a CPU), each zero beyond its own radius."""

    def __init__(self, sigma=(0.1, 2.0), **kwargs):
        super().__init__(**kwargs)
        self.sigma = sigma

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        return {"sigma": _uniform(*self.sigma)}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"sigma": torch.tensor(0.0)}

    def transform(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = float(params["sigma"])
        radius = _blur_radius(sigma)
        x = torch.arange(-radius, radius + 1, dtype=image.dtype)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]

    def kernels(self, sigma: torch.Tensor, largest: int) -> torch.Tensor:
        """``[B, 2·largest + 1]`` kernels of ``sigma`` ``[B]``, each as long as :meth:`transform`'s."""
        radius = torch.ceil(3 * sigma.double()).clamp_min(1)  # as _blur_radius rounds, in double
        return gaussian_kernels(sigma, radius.to(sigma.dtype), largest)

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = params["sigma"].to(images)
        largest = _blur_radius(self.sigma[1]) if runs_whole_batch(images) else _blur_radius(float(sigma.max()))
        kernel = self.kernels(sigma, largest)
        return separable_filter(images, [kernel] * (images.ndim - 2), padding="reflect")


def _blur_radius(sigma: float) -> int:
    return max(1, math.ceil(3 * sigma))


class RandGreyd(RandomViewOp):
    """Grey scale (ITU-R 601 luma, as the colour jitter's saturation uses) in every channel of an RGB
    image: a view that must do without colour. Parameter: ``on``."""

    selects_per_pixel = True

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        return {}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {}

    def transform(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        return _grey(image)[None].expand_as(image).contiguous()

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        on = params["on"].to(images.device).bool().reshape(-1, *([1] * (images.ndim - 1)))
        grey = mix_channels(images, _LUMA.to(images).expand(len(images), 1, 3))  # [B, 1, *spatial]
        return torch.where(on, grey, images)


class RandSolarized(RandomViewOp):
    """Solarisation (BYOL's view): pixels at or above ``threshold`` (0..1) inverted. Parameter: ``on``."""

    selects_per_pixel = True

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        return {}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {}

    def transform(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.where(image >= self.threshold, 1.0 - image, image)

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        on = params["on"].to(images.device).bool()
        threshold = torch.where(on, self.threshold, math.inf).to(images)
        return torch.where(images >= threshold.reshape(-1, *([1] * (images.ndim - 1))), 1.0 - images, images)


def histology_photometric(blur_prob: float = 0.5, grey_prob: float = 0.0, solarize_prob: float = 0.0) -> list[ViewOp]:
    """The colour steps of a histology view: colour jitter (p 0.8), stain jitter (p 0.5), grey scale,
    blur, solarisation. A step of probability 0 among the new ones (grey, solarisation) is left out,
    so it draws nothing and the default view is the one it always was."""
    steps: list[ViewOp] = [ColorJitterd(prob=0.8), HEDJitterd(prob=0.5)]
    if grey_prob > 0:
        steps.append(RandGreyd(prob=grey_prob))
    steps.append(RandGaussianBlurd(prob=blur_prob))
    if solarize_prob > 0:
        steps.append(RandSolarized(prob=solarize_prob))
    return steps


def histology_view(
    size: int = 224, scale=(0.2, 1.0), blur_prob: float = 0.5, grey_prob: float = 0.0, solarize_prob: float = 0.0
) -> ViewOp:
    """The standard histology SSL view: crop, symmetries, colour and stain jitter, (grey,) blur,
    (solarisation). One :class:`~medssl.data.geometric_views.RandGeometricViewd` (crop, flip, ``rot90``
    rendered in one resampling; the draws of crop → flip → rotation) with :func:`histology_photometric`
    steps: the view of :func:`~medssl.data.geometric_views.histology_geometric_view`, whose geometry
    record a :class:`MultiViewd` does not keep."""
    from medssl.data.geometric_views import histology_geometric_view  # which builds on this module

    return histology_geometric_view(size, scale, blur_prob, grey_prob, solarize_prob)


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
        cls,
        n_global: int = 2,
        n_local: int = 6,
        global_size: int = 224,
        local_size: int = 96,
        grey_prob: float = 0.0,
        solarize_prob: float = 0.0,
    ) -> "MultiViewd":
        colour = {"grey_prob": grey_prob, "solarize_prob": solarize_prob}
        return cls(
            [histology_view(global_size, scale=(0.4, 1.0), **colour)] * n_global
            + [histology_view(local_size, scale=(0.05, 0.4), blur_prob=0.2, **colour)] * n_local
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
