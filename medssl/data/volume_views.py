"""Two views of one 3D window for the joint 2D/3D method (Nguyen et al., AAAI 2023), drawn afresh for
every sample and every epoch, on the loader's CPU or in batches on the training device.

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
nothing is cached: every draw (window, subsets, each transform's parameters) comes from torch's global
generator, which :func:`medssl.data.seeding.seeded` fixes from (seed, epoch, index) for each sample
(before device views they came from MONAI's NumPy states: a seed now gives other views, drawn from the
same distributions). The pool's transforms are :class:`~medssl.data.view_ops.ViewOp` s (the intensity
and affine ones from :mod:`medssl.data.radiology_ops`, with MONAI's parameter distributions), so
:class:`VolumeViewsd` is also a :class:`~medssl.data.view_ops.DeviceViews`: the loader cuts the window
and draws, the device makes every view of a batch, each pool transform once per position in the
subsets for the samples that chose it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medssl.data.batched_ops import _apply_axis
from medssl.data.radiology_ops import RandAdjustContrast, RandAffine, RandGaussianNoise, RandGaussianSmooth
from medssl.data.view_ops import VIEW_PARAMS, DeviceViews, Params, ViewOp, on_rows, where_on
from medssl.errors import MedsslError
from medssl.nn.inputs import to_float

#: the pool, in the reference's order (torchio's RandomFlip, RandomAffine, RandomAnisotropy,
#: RandomNoise, RandomBlur, RandomBiasField, RandomGamma)
VOLUME_VIEW_TRANSFORMS = ("flip", "affine", "anisotropy", "noise", "blur", "bias_field", "gamma")


def _plain(image: Any) -> torch.Tensor:
    """A float32 torch tensor without MONAI metadata (MetaTensor tracking is of no use past the views)."""
    tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    return tensor.float()


def flip_batch(images: torch.Tensor, flips: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """``images [B, C, *spatial]`` with sample ``b`` flipped along spatial axis ``a`` of ``axes`` where
    ``flips[b, a]`` is true (``flips [B, n_spatial]`` bool): the batched ``image.flip``. A CPU flips
    each sample as it says (:func:`flip_where` would flip all of them); an accelerator selects, without
    a sync."""
    if images.device.type != "cpu":
        return flip_where(images, flips, axes)
    chosen = flips.tolist()
    dims = [[1 + axis for axis in axes if chosen[b][axis]] for b in range(len(images))]
    return torch.stack([image.flip(d) if d else image for image, d in zip(images, dims, strict=True)])


def flip_where(images: torch.Tensor, flips: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """:func:`flip_batch` as every sample flipped and the flipped ones selected (no host sync)."""
    for axis in axes:
        images = where_on(flips[:, axis], images.flip(2 + axis), images)
    return images


class RandInPlaneFlip(ViewOp):
    """A flip along Y, X or both (one of the three, uniformly: MONAI's ``OneOf`` of ``RandFlipd`` on
    spatial axes 1, 2 and (1, 2)); never along the slices, which would break slice correspondence.
    Params: ``flip`` ``[3]`` bool, one per spatial axis (the first always false)."""

    CHOICES = ((1,), (2,), (1, 2))

    def draw(self, shape: tuple[int, ...]) -> Params:
        if len(shape) != 3:
            raise ValueError(f"in-plane flips of 3D images, got spatial shape {shape}")
        axes = self.CHOICES[int(torch.randint(len(self.CHOICES), ()))]
        return {"flip": torch.tensor([axis in axes for axis in range(3)])}

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        dims = [1 + axis for axis in range(3) if bool(params["flip"][axis])]
        return image.flip(dims) if dims else image

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return flip_batch(images, params["flip"].to(images.device), (1, 2))


def down_up(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """``image [C, *spatial]`` averaged down by ``factor`` along spatial ``axis`` (a thick-slice
    acquisition), then linearly interpolated back to its shape on the same grid (half-voxel aligned)."""
    x = _plain(image)[None]
    size = list(x.shape[2:])
    low = list(size)
    low[axis] = _low_size(size[axis], factor)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(F.interpolate(x, size=low, mode="area"), size=size, mode=mode, align_corners=False)[0]


def _low_size(size: int, factor: float) -> int:
    return max(1, round(size / factor))


def down_up_weights(factors: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size, size]``: :func:`down_up` along one axis of ``size`` voxels as a matrix per sample
    (``factors [B]``): area averaging onto ``m = round(size / factor)`` bins (PyTorch's adaptive pooling
    bins ``[⌊j·size/m⌋, ⌈(j+1)·size/m⌉)``), then linear interpolation back (``align_corners=False``,
    source clamped at 0, PyTorch's rule), multiplied."""
    device = factors.device
    low = torch.round(size / factors.double()).clamp_min(1)[:, None, None]  # [B, 1, 1]; round half to even
    voxel = torch.arange(size, dtype=torch.float64, device=device)
    # area: row j (a low-resolution bin) averages voxels i in [start_j, end_j)
    j = voxel[None, :, None]
    start, end = torch.floor(j * size / low), torch.ceil((j + 1) * size / low)
    i = voxel[None, None, :]
    area = ((i >= start) & (i < end) & (j < low)) / (end - start)  # [B, size (bins), size]
    # linear: output voxel i reads bins i0 and i0 + 1 (the last bin at the end)
    source = ((low[..., 0] / size) * (voxel[None, :] + 0.5) - 0.5).clamp_min(0.0)  # [B, size]
    first = torch.floor(source)
    second = torch.minimum(first + 1, low[..., 0] - 1)
    frac = (source - first)[..., None]
    bins = voxel[None, None, :]
    linear = (1 - frac) * (bins == first[..., None]) + frac * (bins == second[..., None])  # [B, size, bins]
    return (linear @ area).float()


class RandAnisotropy(ViewOp):
    """Down-up sampling along one random spatial axis from ``axes`` by a factor uniform in
    ``downsampling`` (torchio's RandomAnisotropy). MONAI's RandSimulateLowResolutiond zooms every axis
    by the same factor, so it cannot simulate thick slices or a low in-plane resolution on one axis.
    Per sample :func:`down_up`; per batch one matrix product along the axis for the samples that chose
    it (:func:`down_up_weights`). Params: ``axis`` (int64), ``factor``."""

    def __init__(self, axes: Sequence[int] = (0, 1, 2), downsampling: tuple[float, float] = (1.5, 5.0)):
        self.axes, self.downsampling = tuple(int(a) for a in axes), downsampling

    def draw(self, shape: tuple[int, ...]) -> Params:
        axis = self.axes[int(torch.randint(len(self.axes), ()))]
        low, high = self.downsampling
        return {"axis": torch.tensor(axis), "factor": low + (high - low) * torch.rand(())}

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        return down_up(image, int(params["axis"]), float(params["factor"]))

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        chosen = params["axis"].tolist()
        out = images.float().clone()
        for axis in sorted(set(chosen)):
            rows = [b for b, a in enumerate(chosen) if a == axis]
            weights = down_up_weights(params["factor"][rows].to(images.device), images.shape[2 + axis])
            on_rows(out, rows, lambda sub, weights=weights, axis=axis: _apply_axis(sub, weights, axis))
        return out


def legendre(x: torch.Tensor, degree: int) -> torch.Tensor:
    """``[degree + 1, len(x)]``: the Legendre polynomials ``P_0 .. P_degree`` at ``x`` (Bonnet's recursion)."""
    values = [torch.ones_like(x), x]
    for n in range(1, degree):
        values.append(((2 * n + 1) * x * values[n] - n * values[n - 1]) / (n + 1))
    return torch.stack(values[: degree + 1])


def bias_terms(degree: int) -> list[tuple[int, int, int]]:
    """The polynomial degrees ``(i, j, k)`` (along D, H, W) of a 3D bias field's coefficients, in MONAI's
    order: every ``i + j + k <= degree``, ``i`` slowest."""
    return [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]


def bias_fields(coeffs: torch.Tensor, shape: Sequence[int], degree: int) -> torch.Tensor:
    """``[B, D, H, W]`` log bias fields ``Σ c_ijk P_i(z) P_j(y) P_k(x)`` of ``coeffs [B, terms]``
    (:func:`bias_terms` order) on ``linspace(-1, 1)`` grids: MONAI's ``RandBiasField`` field."""
    terms = bias_terms(degree)
    if coeffs.shape[-1] != len(terms):
        raise ValueError(f"a degree-{degree} 3D field has {len(terms)} coefficients, got {coeffs.shape[-1]}")
    grid = torch.zeros(coeffs.shape[0], *(degree + 1,) * 3, dtype=torch.float32, device=coeffs.device)
    index = torch.tensor(terms, device=coeffs.device)
    grid[:, index[:, 0], index[:, 1], index[:, 2]] = coeffs.float()
    z, y, x = (legendre(torch.linspace(-1.0, 1.0, n, device=coeffs.device), degree) for n in shape)
    return torch.einsum("bijk,kx,jy,iz->bzyx", grid, x, y, z)


class RandBiasField(ViewOp):
    """An MR bias field: the image times ``exp`` of a degree-``degree`` polynomial field whose
    coefficients are uniform in ``coeff_range`` (MONAI's ``RandBiasField``; :func:`bias_fields`).
    Params: ``coeffs`` ``[terms]``."""

    def __init__(self, degree: int = 3, coeff_range: tuple[float, float] = (0.0, 0.1)):
        if degree < 1:
            raise ValueError(f"degree should be at least 1, got {degree}")
        self.degree, self.coeff_range = degree, coeff_range

    def draw(self, shape: tuple[int, ...]) -> Params:
        if len(shape) != 3:
            raise ValueError(f"bias fields of 3D images, got spatial shape {shape}")
        low, high = self.coeff_range
        return {"coeffs": low + (high - low) * torch.rand(len(bias_terms(self.degree)))}

    def apply(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        return self.apply_batch(image[None], {"coeffs": params["coeffs"][None]})[0]

    def apply_batch(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        field = bias_fields(params["coeffs"].to(images.device), images.shape[2:], self.degree)
        return images * torch.exp(field)[:, None]


_BUILDERS: dict[str, Callable[[], ViewOp]] = {
    "flip": RandInPlaneFlip,
    # rotation about the slice axis (rotate_range[0]; checked in the tests) up to ±15°, in-plane scaling ±10 %
    "affine": lambda: RandAffine(rotate_range=(0.26, 0.0, 0.0), scale_range=(0.0, 0.1, 0.1), prob=1.0),
    "anisotropy": RandAnisotropy,
    # on the cache's z-scored intensities: torchio's default noise std (0, 0.25)
    "noise": lambda: RandGaussianNoise(std=0.25, prob=1.0),
    "blur": lambda: RandGaussianSmooth(sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5), sigma_z=(0.25, 1.5), prob=1.0),
    "bias_field": lambda: RandBiasField(degree=3, coeff_range=(0.0, 0.1)),
    # torchio's default log-gamma range (-0.3, 0.3)
    "gamma": lambda: RandAdjustContrast(gamma=(0.74, 1.35), prob=1.0),
}


def view_transform(name: str) -> ViewOp:
    """The pool's transform ``name`` (one of :data:`VOLUME_VIEW_TRANSFORMS`), always applied."""
    if name not in _BUILDERS:
        raise MedsslError(f"unknown view transform {name!r}: choose from {', '.join(VOLUME_VIEW_TRANSFORMS)}")
    return _BUILDERS[name]()


class VolumeViewsd(DeviceViews):
    """``{"views": [view_1, ..., view_n], "view_transforms": ["flip+noise", ...], ...}`` from a sample
    with ``image [1, Z, Y, X]``: one random window of ``spatial_size`` (zero-padded first, symmetrically,
    where the stack is smaller; ``label`` too when present), then per view a disjoint random subset of
    ``transforms_per_view`` names from ``transforms`` (default: all of :data:`VOLUME_VIEW_TRANSFORMS`),
    applied in the drawn order. Each view is float32 ``[1, D, H, W]``.

    ``keep_image``: keep the un-augmented window under ``image`` (a third volume's worth of memory per
    sample; useful to look at, and for slice-level checks), or drop it. ``dtype``: the window's dtype on
    its way to the device (``torch.float16`` for a float16 cache: exact in half the bytes); the views
    and the kept window are float32 either way.

    Draws: the window's corner, the permutation of the pool, then for each view every pool
    transform's parameters in pool order (the unused ones too, so parameters collate). As device views
    the loader sends the window and the parameters (``order`` ``[k]``, the pool indices in applied order,
    and ``<name>.<param>``, one entry per view); :meth:`apply_batch` makes the views.
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
        dtype: torch.dtype | None = None,
    ):
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 3 or min(self.spatial_size) < 1:
            raise MedsslError(f"spatial_size must be 3 positive sizes (D, H, W), got {list(spatial_size)}")
        names = tuple(VOLUME_VIEW_TRANSFORMS if transforms is None else transforms)
        self.pool = {name: view_transform(name) for name in names}  # refuses an unknown name
        if len(set(names)) != len(names):
            raise MedsslError(f"view transforms listed twice in {list(names)}")
        if views < 1 or transforms_per_view < 1 or views * transforms_per_view > len(names):
            raise MedsslError(
                f"{views} views × {transforms_per_view} transforms per view need that many distinct transforms, "
                f"but the pool has {len(names)} ({', '.join(names)}): lower transforms_per_view or add transforms"
            )
        self.key, self.out_key, self.keep_image, self.dtype = key, out_key, keep_image, dtype
        self.views, self.transforms_per_view, self.names = views, transforms_per_view, names

    # -- the loader's half: the window and every draw ---------------------------------------------
    def _window(self, image: torch.Tensor) -> tuple[tuple[slice, ...], list[int]]:
        """A random ``spatial_size`` window of ``image``'s spatial shape: the slices to cut and the
        symmetric zero padding after cutting (F.pad order), as MONAI's SpatialPad + RandSpatialCrop."""
        cut, pad = [], []
        for n, size in zip(image.shape[1:], self.spatial_size, strict=True):
            start = int(torch.randint(0, max(n, size) - size + 1, ()))
            cut.append(slice(start, start + size) if n >= size else slice(None))
            missing = max(0, size - n)
            pad = [missing // 2, missing - missing // 2, *pad]
        return (slice(None), *cut), pad

    def draw_sample(self, sample: Mapping[Hashable, Any]) -> dict:
        out = self._draw(sample)
        if self.dtype is not None:
            out[self.key] = out[self.key].to(self.dtype)
        return out

    def _draw(self, sample: Mapping[Hashable, Any]) -> dict:
        """The sample with its float32 window (and label window), the views' names and parameters."""
        out: dict = dict(sample)
        image = _plain(out[self.key])
        if image.ndim != 4:
            raise MedsslError(f"volume views need an image [1, Z, Y, X], got shape {list(image.shape)}")
        cut, pad = self._window(image)
        out[self.key] = F.pad(image[cut], pad)
        if "label" in out:
            out["label"] = F.pad(_plain(out["label"])[cut], pad).long()
        order = torch.randperm(len(self.names))
        k = self.transforms_per_view
        chosen = [order[v * k : (v + 1) * k] for v in range(self.views)]
        out["view_transforms"] = ["+".join(self.names[int(i)] for i in subset) for subset in chosen]
        out[VIEW_PARAMS] = [self._draw_view(subset) for subset in chosen]
        return out

    def _draw_view(self, subset: torch.Tensor) -> Params:
        params: Params = {"order": subset.clone()}
        for name, op in self.pool.items():
            params.update({f"{name}.{key}": value for key, value in op.draw(self.spatial_size).items()})
        return params

    # -- the CPU path: per sample -------------------------------------------------------------------
    def __call__(self, sample: Mapping[Hashable, Any]) -> dict:
        out = self._draw(sample)
        window = out[self.key]
        out[self.out_key] = [self._view(window, params) for params in out.pop(VIEW_PARAMS)]
        if not self.keep_image:
            del out[self.key]
        return out

    def _view(self, window: torch.Tensor, params: Params) -> torch.Tensor:
        view = window
        for index in params["order"].tolist():
            name = self.names[index]
            view = self.pool[name].apply(view, _of(params, name))
        return _plain(view)

    # -- the device's half: per batch ---------------------------------------------------------------
    def apply_batch(self, batch: dict) -> dict:
        windows = to_float(batch[self.key])
        out = {k: v for k, v in batch.items() if k not in (VIEW_PARAMS, self.key)}
        out[self.out_key] = [self._view_batch(windows, params) for params in batch[VIEW_PARAMS]]
        if self.keep_image:
            out[self.key] = windows
        return out

    def _view_batch(self, windows: torch.Tensor, params: Params) -> torch.Tensor:
        """One view of every sample: at each position of the subsets, each pool transform on the
        samples that chose it there."""
        views = windows.clone()
        orders = params["order"].tolist()  # [B, k]: which transform each sample applies at each position
        for position in range(self.transforms_per_view):
            for index, name in enumerate(self.names):
                rows = [b for b, order in enumerate(orders) if order[position] == index]
                if rows:
                    own = {key: value[rows] for key, value in _of(params, name).items()}
                    on_rows(views, rows, lambda sub, op=self.pool[name], own=own: op.apply_batch(sub, own))
        return views


def _of(params: Params, name: str) -> Params:
    """Pool transform ``name``'s parameters among a view's."""
    prefix = f"{name}."
    return {key.removeprefix(prefix): value for key, value in params.items() if key.startswith(prefix)}
