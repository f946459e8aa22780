"""Radiology augmentations as :class:`~medssl.data.view_ops.ViewOp` s, for 2D slices ``[1, H, W]`` and 3D
patches ``[1, D, H, W]``: the MONAI ``Rand*`` transforms radiology views used, split into a draw and a
deterministic apply so they also run batched on the training device.

Each op draws its parameters with the distribution of the MONAI transform it replaces (named in its
docstring; the same parameter conventions, including MONAI's axis order: the first spatial axis of
the tensor is MONAI's ``x``) from torch's global generator, and applies them as MONAI's deterministic
transform does (``Affine``, ``ScaleIntensity``, ``ShiftIntensity``, ``GaussianSmooth``,
``AdjustContrast``; the tests hold each to its MONAI oracle). Each op is a
:class:`~medssl.data.view_ops.RandomViewOp` written once, for a batch (one image is a batch of one);
a skipped op (``on`` false) leaves its samples exactly as they were, as MONAI's do.

:class:`PadOrCropd` is the deterministic step before the views (MONAI's ``ResizeWithPadOrCrop`` on plain
tensors), for :class:`~medssl.data.transforms.MultiViewd` ``prepare``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medssl.data.batched_ops import separable_filter
from medssl.data.view_ops import Params, RandomViewOp

Range = tuple[float, float]


def _symmetric(value: float | Sequence[float]) -> Range:
    """MONAI's reading of a range: a number ``v`` is ``(-v, v)``, a pair is ``(min, max)``."""
    if isinstance(value, (int, float)):
        return (min(-value, value), max(-value, value))
    low, high = (float(v) for v in value)
    return (min(low, high), max(low, high))


def _ranges(value: float | Sequence[float | Sequence[float]]) -> list[Range]:
    """MONAI's ``RandAffineGrid`` ranges: one entry per parameter, each a number ``v`` (``(-v, v)``) or a
    ``(min, max)`` pair; a bare number is one entry."""
    entries = [value] if isinstance(value, (int, float)) else list(value)
    if any(entry is None for entry in entries):
        raise ValueError(f"ranges without gaps, got {value}: MONAI would shift later entries onto earlier axes")
    return [_symmetric(entry) for entry in entries]  # type: ignore[arg-type]


def _uniform(ranges: Sequence[Range]) -> list[float]:
    """One number uniform in each ``(low, high)`` (one draw of ``len(ranges)`` numbers; few torch calls,
    as the loader draws every view of every sample)."""
    drawn = torch.rand(len(ranges), dtype=torch.float64).tolist()
    return [low + (high - low) * u for (low, high), u in zip(ranges, drawn, strict=True)]


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[B]`` values shaped ``[B, 1, ...]`` to broadcast over images with ``ndim`` dimensions."""
    return values.reshape(-1, *([1] * (ndim - 1)))


class RandAffine(RandomViewOp):
    """Rotation and scaling about the image centre, bilinear, output the input's size: MONAI's
    ``RandAffine(prob, rotate_range, scale_range, padding_mode=padding)``.

    ``rotate_range``: 2D one angle (radians), 3D up to three, about the tensor's first, second and third
    spatial axes, composed as MONAI's default intrinsic ``"XYZ"`` order (about axis 0 rotates the
    axial ``H × W`` plane of a ``[D, H, W]`` patch). ``scale_range``: one factor ``1 + U(range)`` per
    axis in axis order; as in MONAI, axes without an entry keep scale 1, so a bare number scales only
    the first axis. Entries are numbers ``v`` (``U(-v, v)``) or ``(min, max)`` pairs. Output pixel ``p``
    (centred pixel coordinates) reads the input at ``R · S · p``, MONAI's grid; ``padding``: what lies
    outside (``"zeros"``, ``"border"``, ``"reflection"``). Params: ``on``, ``angles`` ``[1]`` (2D) or
    ``[3]`` (3D), ``scales`` ``[n]``.
    """

    def __init__(
        self,
        rotate_range: float | Sequence[float | Sequence[float]] = 0.0,
        scale_range: float | Sequence[float | Sequence[float]] = 0.0,
        prob: float = 0.1,
        padding: str = "zeros",
        key: str = "image",
    ):
        super().__init__(key, prob)
        if padding not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding must be zeros, border or reflection, got {padding!r}")
        self.rotate_range, self.scale_range, self.padding = _ranges(rotate_range), _ranges(scale_range), padding

    def identity(self, shape: tuple[int, ...]) -> Params:
        n = len(shape)
        if n not in (2, 3):
            raise ValueError(f"affine views of 2D or 3D images, got spatial shape {shape}")
        if n == 3 and len(self.rotate_range) > 3:
            raise ValueError(f"at most 3 rotation angles in 3D, got {len(self.rotate_range)}")
        return {"angles": torch.zeros(1 if n == 2 else 3), "scales": torch.ones(n)}

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        params = self.identity(shape)  # MONAI draws every entry; 2D rotates by the first angle, scales n axes
        angles, scales = params["angles"], params["scales"]
        drawn = _uniform(self.rotate_range)[: len(angles)]
        angles[: len(drawn)] = torch.tensor(drawn)
        drawn = [1.0 + f for f in _uniform(self.scale_range)[: len(shape)]]
        scales[: len(drawn)] = torch.tensor(drawn)
        return params

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        spatial = images.shape[2:]
        matrix = affine_matrices(params["angles"].to(images.device), params["scales"].to(images.device))
        # MONAI's grid is in pixels centred on the image, normalised by 2 / max(2, size); affine_grid's
        # base grid is u = 2p / size (align_corners=False), so theta = diag(2 / max(2, d)) · A · diag(d / 2),
        # with the axes reversed into grid_sample's (x, y[, z]) order
        sizes = torch.tensor([float(d) for d in spatial], device=images.device)
        theta = (2.0 / sizes.clamp_min(2.0))[:, None] * matrix * (sizes / 2.0)[None, :]
        theta = theta.flip(-1).flip(-2)
        theta = torch.cat([theta, theta.new_zeros(*theta.shape[:-1], 1)], dim=-1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)


def affine_matrices(angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``[B, n, n]`` matrices ``R · S`` of MONAI's ``create_rotate`` (2D: ``angles`` ``[B, 1]``; 3D:
    ``[B, 3]``, intrinsic ``"XYZ"``) and ``create_scale`` (``scales`` ``[B, n]``), in float32."""
    angles, scales = angles.float(), scales.float()
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    if scales.shape[-1] == 2:
        rotation = torch.stack([torch.stack([c[:, 0], -s[:, 0]], -1), torch.stack([s[:, 0], c[:, 0]], -1)], -2)
    else:

        def matrix(rows: list[list[torch.Tensor]]) -> torch.Tensor:
            return torch.stack([torch.stack(row, -1) for row in rows], -2)

        about_x = matrix([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
        about_y = matrix([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
        about_z = matrix([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
        rotation = about_x @ about_y @ about_z
    return rotation * scales[:, None, :]


class RandScaleIntensity(RandomViewOp):
    """``x · (1 + f)``, ``f`` uniform in ``factors`` (a number ``v``: ``(-v, v)``): MONAI's
    ``RandScaleIntensity(factors, prob)``. Params: ``on``, ``factor`` (0 when off)."""

    def __init__(self, factors: float | Sequence[float] = 0.1, prob: float = 0.1, key: str = "image"):
        super().__init__(key, prob)
        self.factors = _symmetric(factors)

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        return {"factor": torch.tensor(_uniform([self.factors])[0])}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"factor": torch.tensor(0.0)}

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return images * (1.0 + _per_sample(params["factor"].to(images), images.ndim))


class RandShiftIntensity(RandomViewOp):
    """``x + o``, ``o`` uniform in ``offsets`` (a number ``v``: ``(-v, v)``): MONAI's
    ``RandShiftIntensity(offsets, prob)``. Params: ``on``, ``offset`` (0 when off)."""

    def __init__(self, offsets: float | Sequence[float] = 0.1, prob: float = 0.1, key: str = "image"):
        super().__init__(key, prob)
        self.offsets = _symmetric(offsets)

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        return {"offset": torch.tensor(_uniform([self.offsets])[0])}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"offset": torch.tensor(0.0)}

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return images + _per_sample(params["offset"].to(images), images.ndim)


class RandGaussianNoise(RandomViewOp):
    """Additive noise ``N(mean, σ²)`` with ``σ`` uniform in ``[0, std]``: MONAI's
    ``RandGaussianNoise(prob, mean, std)`` (``sample_std=True``). Params: ``on``, ``std``, ``seed``.

    The noise comes from a generator seeded with the drawn ``seed``, one per sample, so a sample's
    noise is the same per sample and in a batch on the same kind of device (a CPU's and a GPU's
    generators differ). The batched path reads the seeds on the host: one small sync per batch."""

    def __init__(self, mean: float = 0.0, std: float = 0.1, prob: float = 0.1, key: str = "image"):
        super().__init__(key, prob)
        self.mean, self.std = float(mean), float(std)

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        std = _uniform([(0.0, self.std)])[0]
        return {"std": torch.tensor(std), "seed": torch.randint(0, 2**62, ())}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"std": torch.tensor(0.0), "seed": torch.tensor(0)}

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        noise = torch.empty_like(images)
        for k, seed in enumerate(params["seed"].tolist()):  # the host needs the seeds: a sync on a GPU
            generator = torch.Generator(images.device).manual_seed(int(seed))
            noise[k] = torch.randn(images.shape[1:], generator=generator, device=images.device, dtype=images.dtype)
        return images + (self.mean + _per_sample(params["std"].to(images), images.ndim) * noise)


def _tail(sigma: float, truncated: float = 4.0) -> int:
    """MONAI's ``gaussian_1d`` half-length: ``int(max(σ · truncated, 0.5) + 0.5)``."""
    return int(max(sigma * truncated, 0.5) + 0.5)


def _tails(sigma: torch.Tensor, truncated: float = 4.0) -> torch.Tensor:
    """:func:`_tail` of each ``sigma`` (in float64, as MONAI's Python floats)."""
    return ((sigma.double() * truncated).clamp_min(0.5) + 0.5).floor()


def gaussian_kernels(sigma: torch.Tensor, tail: int) -> torch.Tensor:
    """``[B, 2·tail + 1]`` kernels equal to MONAI's ``gaussian_1d(σ, truncated=4, approx="erf")`` (the
    Gaussian integrated over each pixel, not renormalised) for ``sigma`` ``[B]``, zero beyond each
    sample's own tail: the same filter under zero padding, in a length every sample shares."""
    sigma = sigma.float()
    x = torch.arange(-tail, tail + 1, dtype=torch.float32, device=sigma.device)[None]
    t = torch.tensor(0.70710678, dtype=torch.float32, device=sigma.device) / sigma.abs()[:, None]
    kernels = (0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())).clamp(min=0)
    return kernels * (x.abs() <= _tails(sigma)[:, None])


class RandGaussianSmooth(RandomViewOp):
    """Gaussian blur, ``σ`` per axis uniform in ``sigma_x``, ``sigma_y`` (and ``sigma_z`` in 3D) pixels
    along the first, second (and third) spatial axes: MONAI's ``RandGaussianSmooth`` and its
    ``GaussianSmooth`` (``approx="erf"`` kernels truncated at 4 σ, zero padding), batched through
    :func:`~medssl.data.batched_ops.separable_filter`. Params: ``on``, ``sigma`` ``[n]``."""

    def __init__(
        self,
        sigma_x: Sequence[float] = (0.25, 1.5),
        sigma_y: Sequence[float] = (0.25, 1.5),
        sigma_z: Sequence[float] = (0.25, 1.5),
        prob: float = 0.1,
        key: str = "image",
    ):
        super().__init__(key, prob)
        self.sigmas = [(float(low), float(high)) for low, high in (sigma_x, sigma_y, sigma_z)]

    def identity(self, shape: tuple[int, ...]) -> Params:
        if len(shape) not in (2, 3):
            raise ValueError(f"smoothing of 2D or 3D images, got spatial shape {shape}")
        return {"sigma": torch.tensor([low for low, _ in self.sigmas[: len(shape)]])}

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        self.identity(shape)  # the shape check
        return {"sigma": torch.tensor(_uniform(self.sigmas[: len(shape)]))}

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = params["sigma"].to(images.device)
        kernels = [
            gaussian_kernels(sigma[:, axis], _tail(max(self.sigmas[axis])))  # every sample's length: the widest
            for axis in range(images.ndim - 2)
        ]
        return separable_filter(images, kernels, padding="zeros")


class RandAdjustContrast(RandomViewOp):
    """Gamma on the image's own range, ``((x − min) / (range + 1e-7))^γ · range + min`` with the
    minimum and range over the whole image, ``γ`` uniform in ``gamma`` (a number ``g > 0.5``:
    ``(0.5, g)``): MONAI's ``RandAdjustContrast(prob, gamma)`` and ``AdjustContrast``. Params: ``on``,
    ``gamma`` (1 when off)."""

    def __init__(self, gamma: float | Sequence[float] = (0.5, 4.5), prob: float = 0.1, key: str = "image"):
        super().__init__(key, prob)
        if isinstance(gamma, (int, float)):
            if gamma <= 0.5:
                raise ValueError(f"a single gamma is the upper end of (0.5, gamma) and must exceed 0.5, got {gamma}")
            self.gamma = (0.5, float(gamma))
        else:
            low, high = (float(g) for g in gamma)
            self.gamma = (min(low, high), max(low, high))

    def draw_on(self, shape: tuple[int, ...]) -> Params:
        return {"gamma": torch.tensor(_uniform([self.gamma])[0])}

    def identity(self, shape: tuple[int, ...]) -> Params:
        return {"gamma": torch.tensor(1.0)}

    def transform_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        flat = images.flatten(1)
        low = _per_sample(flat.amin(1), images.ndim)
        spread = _per_sample(flat.amax(1), images.ndim) - low
        gamma = _per_sample(params["gamma"].to(images), images.ndim)
        return ((images - low) / (spread + 1e-7)) ** gamma * spread + low


def pad_or_crop(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``image`` ``[C, *spatial]`` zero-padded symmetrically and centre-cropped to ``size``: MONAI's
    ``ResizeWithPadOrCrop`` (extra padding after, crop start ``d // 2 − s // 2``) on a plain tensor."""
    if len(size) != image.ndim - 1:
        raise ValueError(f"size {tuple(size)} for an image of shape {tuple(image.shape)}")
    region = [slice(None)]
    widths: list[int] = []
    for d, s in zip(image.shape[1:], size, strict=True):
        start = max(d // 2 - s // 2, 0) if d > s else 0
        region.append(slice(start, start + s))
        before = max(s - d, 0) // 2
        widths = [before, max(s - d, 0) - before, *widths]  # F.pad lists the last axis first
    cropped = image[tuple(region)]
    return F.pad(cropped, widths) if any(widths) else cropped


class PadOrCropd:
    """The deterministic step before radiology views: ``key`` padded or cropped to ``size``
    (:func:`pad_or_crop`), so every sample of a batch has one shape (device views need it), and cast
    to ``dtype`` if given (float16 halves what device views send, exactly for float16 caches)."""

    def __init__(self, size: Sequence[int], key: str = "image", dtype: torch.dtype | None = None):
        self.size, self.key, self.dtype = tuple(int(s) for s in size), key, dtype

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        image = pad_or_crop(sample[self.key], self.size)
        out[self.key] = image if self.dtype is None else image.to(self.dtype)
        return out
