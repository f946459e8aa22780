"""Radiology views as ViewOps: each op against the MONAI transform it replaces (values and parameter
distributions), batched against per sample, and radiology views made on the device against the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.data.radiology_ops import (
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
    pad_or_crop,
)
from medssl.data.view_ops import ViewOp

SHAPES = [(1, 20, 17), (1, 8, 12, 12)]  # a 2D slice and a 3D patch, [C, *spatial]


def _ops(ndim: int, prob: float) -> list[ViewOp]:
    angles = (0.3,) if ndim == 2 else (0.3, 0.2, 0.25)
    return [
        RandAffine(rotate_range=angles, scale_range=(0.2,) * ndim, prob=prob),
        RandScaleIntensity(0.1, prob=prob),
        RandShiftIntensity((-0.2, 0.1), prob=prob),
        RandGaussianNoise(mean=0.01, std=0.05, prob=prob),
        RandGaussianSmooth((0.25, 1.5), (0.5, 1.0), (0.3, 0.8), prob=prob),
        RandAdjustContrast((0.5, 2.0), prob=prob),
    ]


def _monai_apply(op: ViewOp, image: torch.Tensor, params: dict) -> torch.Tensor:
    """What MONAI's deterministic transform makes of ``image`` with ``params``."""
    from monai.transforms.intensity.array import AdjustContrast, GaussianSmooth, ScaleIntensity, ShiftIntensity
    from monai.transforms.spatial.array import Affine

    if isinstance(op, RandAffine):
        angles = params["angles"].tolist()
        out = Affine(rotate_params=angles, scale_params=params["scales"].tolist(), padding_mode="zeros")(image)[0]
    elif isinstance(op, RandScaleIntensity):
        out = ScaleIntensity(minv=None, maxv=None, factor=float(params["factor"]))(image)
    elif isinstance(op, RandShiftIntensity):
        out = ShiftIntensity(float(params["offset"]))(image)
    elif isinstance(op, RandGaussianSmooth):
        out = GaussianSmooth(sigma=params["sigma"].tolist())(image)
    else:
        assert isinstance(op, RandAdjustContrast)
        out = AdjustContrast(float(params["gamma"]))(image)
    return torch.as_tensor(out).as_subclass(torch.Tensor)


@pytest.mark.parametrize("shape", SHAPES)
def test_ops_equal_their_monai_transforms(shape):
    torch.manual_seed(0)
    image = torch.rand(shape)
    for op in _ops(len(shape) - 1, prob=1.0):
        if isinstance(op, RandGaussianNoise):
            continue  # MONAI's noise comes from NumPy: see test_noise_is_seeded_gaussian_noise
        for _ in range(3):
            params = op.draw(shape[1:])
            expected = _monai_apply(op, image, params)
            torch.testing.assert_close(op.apply(image, params), expected, atol=1e-5, rtol=0, msg=type(op).__name__)


@pytest.mark.parametrize("shape", SHAPES)
def test_batched_ops_equal_per_sample_ops(shape):
    """Mixed on/off samples: the batch gives each sample what the per-sample path gives; skipped samples
    come back unchanged."""
    torch.manual_seed(1)
    images = torch.rand(6, *shape)
    for op in _ops(len(shape) - 1, prob=0.5):
        drawn = [op.draw(shape[1:]) for _ in range(6)]
        params = {name: torch.stack([p[name] for p in drawn]) for name in drawn[0]}
        assert 0 < int(params["on"].sum()) < 6, type(op).__name__  # the seed gives both kinds
        expected = torch.stack([op.apply(images[k], p) for k, p in enumerate(drawn)])
        batched = op.apply_batch(images, params)
        torch.testing.assert_close(batched, expected, atol=1e-6, rtol=0, msg=type(op).__name__)
        off = ~params["on"]
        assert torch.equal(batched[off], images[off]), type(op).__name__


def test_noise_is_seeded_gaussian_noise():
    op = RandGaussianNoise(mean=0.02, std=0.05, prob=1.0)
    torch.manual_seed(2)
    params = op.draw((64, 64))
    zeros = torch.zeros(1, 64, 64)
    noise = op.apply(zeros, params)
    assert torch.equal(noise, op.apply(zeros, params))  # from the drawn seed, not the global generator
    assert abs(float(noise.mean()) - 0.02) < 4 * float(params["std"]) / 64
    assert abs(float(noise.std()) / float(params["std"]) - 1) < 0.05
    assert not torch.equal(noise, op.apply(zeros, op.draw((64, 64))))


def _draws(op: ViewOp, shape: tuple[int, ...], n: int = 2000) -> dict[str, np.ndarray]:
    torch.manual_seed(3)
    drawn = [op.draw(shape) for _ in range(n)]
    return {name: torch.stack([p[name] for p in drawn]).double().numpy() for name in drawn[0]}


class _Recording:
    """A NumPy ``RandomState`` that remembers the last number ``uniform`` gave (MONAI's noise keeps the
    noise it drew, not its σ)."""

    def __init__(self, state: np.random.RandomState):
        self.state, self.last = state, None

    def uniform(self, *args, **kwargs):
        self.last = self.state.uniform(*args, **kwargs)
        return self.last

    def __getattr__(self, name: str):
        return getattr(self.state, name)


def _monai_draws(transform, n: int = 2000, **kwargs) -> tuple[np.ndarray, list[dict]]:
    """(on, the parameters MONAI drew for the samples that are on) over ``n`` calls of ``randomize``;
    ``"uniform"``: its last uniform number."""
    transform.set_random_state(4)
    transform.R = _Recording(transform.R)
    on, params = [], []
    for _ in range(n):
        transform.randomize(**kwargs)
        on.append(transform._do_transform)
        if transform._do_transform:
            grid = getattr(transform, "rand_affine_grid", None)
            extra = {} if grid is None else {"angles": grid.rotate_params, "scales": grid.scale_params}
            params.append({**vars(transform), **extra, "uniform": transform.R.last})
    return np.array(on), params


def _assert_same_distribution(ours: np.ndarray, theirs: np.ndarray, low: float, high: float, name: str) -> None:
    """Both samples lie in ``[low, high]``, reach near both ends and have the same mean and spread
    (to ~5 standard errors of a uniform sample of 1000)."""
    spread = (high - low) or 1.0
    for values in (ours, theirs):
        assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, name
        assert values.min() < low + 0.02 * spread and values.max() > high - 0.02 * spread, name
    assert abs(ours.mean() - theirs.mean()) < 0.05 * spread, name
    assert abs(ours.std() - theirs.std()) < 0.05 * spread, name


@pytest.mark.parametrize("ndim", [2, 3])
def test_parameter_distributions_equal_monais(ndim):
    """~2000 draws of each op against ~2000 of the MONAI Rand transform it replaces, with the same
    arguments: how often it is on, and the range, mean and spread of each parameter."""
    from monai.transforms.intensity.array import (
        RandAdjustContrast as MonaiContrast,
    )
    from monai.transforms.intensity.array import (
        RandGaussianNoise as MonaiNoise,
    )
    from monai.transforms.intensity.array import (
        RandGaussianSmooth as MonaiSmooth,
    )
    from monai.transforms.intensity.array import (
        RandScaleIntensity as MonaiScale,
    )
    from monai.transforms.intensity.array import (
        RandShiftIntensity as MonaiShift,
    )
    from monai.transforms.spatial.array import RandAffine as MonaiAffine

    shape = (16, 16) if ndim == 2 else (8, 8, 8)
    angles: tuple[float | tuple[float, float], ...] = (0.2,) if ndim == 2 else (0.2, (-0.1, 0.3), 0.2)
    sigmas = [(0.25, 1.5), (0.5, 1.0), (0.2, 0.4)]
    pairs = [  # (ours, MONAI's, our parameter, MONAI's name for each of its entries, each entry's range)
        (RandScaleIntensity(0.1, prob=0.5), MonaiScale(0.1, prob=0.5), "factor", ["factor"], [(-0.1, 0.1)]),
        (RandShiftIntensity(0.1, prob=0.3), MonaiShift(0.1, prob=0.3), "offset", ["_offset"], [(-0.1, 0.1)]),
        (RandAdjustContrast(1.5, prob=0.5), MonaiContrast(0.5, 1.5), "gamma", ["gamma_value"], [(0.5, 1.5)]),
        (
            RandGaussianSmooth(*sigmas, prob=0.5),
            MonaiSmooth(*sigmas, prob=0.5),
            "sigma",
            ["x", "y", "z"][:ndim],
            sigmas[:ndim],
        ),
    ]
    for ours, theirs, name, their_names, bounds in pairs:
        drawn = _draws(ours, shape)
        on, monai = _monai_draws(theirs)
        assert abs(drawn["on"].mean() - on.mean()) < 0.05, type(ours).__name__
        values = drawn[name][drawn["on"] > 0].reshape(int(drawn["on"].sum()), -1)
        for k, (key, (low, high)) in enumerate(zip(their_names, bounds, strict=True)):
            theirs_k = np.array([p[key] for p in monai], dtype=np.float64)
            _assert_same_distribution(values[:, k], theirs_k, low, high, f"{type(ours).__name__}.{name}[{k}]")

    # RandAffine: a bare scale range scales the first axis only, in MONAI and here
    ours = RandAffine(rotate_range=angles, scale_range=0.1, prob=0.5)
    drawn = _draws(ours, shape)
    on, monai = _monai_draws(MonaiAffine(prob=0.5, rotate_range=angles, scale_range=0.1))
    assert abs(drawn["on"].mean() - on.mean()) < 0.05
    mask = drawn["on"] > 0
    their_angles = np.array([p["angles"] for p in monai])
    their_scales = np.array([p["scales"] for p in monai])
    assert their_scales.shape[1] == 1 and np.all(drawn["scales"][:, 1:] == 1.0)
    _assert_same_distribution(drawn["scales"][mask, 0], their_scales[:, 0], 0.9, 1.1, "scale")
    for k, bounds in enumerate(angles):
        low, high = bounds if isinstance(bounds, tuple) else (-bounds, bounds)
        _assert_same_distribution(drawn["angles"][mask, k], their_angles[:, k], low, high, f"angle {k}")

    ours = RandGaussianNoise(std=0.05, prob=0.5)
    drawn = _draws(ours, shape)
    on, monai = _monai_draws(MonaiNoise(prob=0.5, std=0.05), img=torch.zeros(1, 2, 2))
    assert abs(drawn["on"].mean() - on.mean()) < 0.05
    their_std = np.array([p["uniform"] for p in monai])  # the σ of its noise
    _assert_same_distribution(drawn["std"][drawn["on"] > 0], their_std, 0.0, 0.05, "noise std")


@pytest.mark.parametrize(("shape", "size"), [((1, 10, 13), (8, 16)), ((1, 9, 7), (9, 6)), ((1, 5, 6, 7), (4, 8, 3))])
def test_pad_or_crop_is_monais_resize_with_pad_or_crop(shape, size):
    from monai.transforms.croppad.array import ResizeWithPadOrCrop

    image = torch.rand(shape)
    assert torch.equal(
        pad_or_crop(image, size), torch.as_tensor(ResizeWithPadOrCrop(size)(image)).as_subclass(torch.Tensor)
    )
