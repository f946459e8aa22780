"""Radiology views as ViewOps: each op against the MONAI transform it replaces (values and parameter
distributions), batched against per sample, and radiology views made on the device against the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.data.geometric_views import GeometricViewsd, radiology_geometric_view, sample_side_box
from medssl.data.radiology_ops import (
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
    pad_or_crop,
)
from medssl.data.transforms import radiology_views
from medssl.data.view_ops import ViewOp
from tests.views import assert_same_views, both_ways, first_training_batch

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


@pytest.mark.parametrize("every_sample", [False, True])  # a CPU's route, an accelerator's
@pytest.mark.parametrize("shape", SHAPES)
def test_batched_ops_equal_per_sample_ops(shape, every_sample, monkeypatch):
    """Mixed on/off samples: the batch gives each sample what the per-sample path gives; skipped samples
    come back unchanged."""
    from medssl.data import view_ops

    monkeypatch.setattr(view_ops, "runs_whole_batch", lambda images: every_sample)
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


def test_side_boxes_are_drawn_as_monais_random_size_crop():
    """RandGeometricViewd(box="sides") draws the crops of MONAI's RandSpatialCrop(roi 40 %, random size)."""
    from monai.transforms.croppad.array import RandSpatialCrop

    shape, n = (20, 13, 9), 2000
    torch.manual_seed(5)
    ours = [sample_side_box(shape, (0.4, 1.0)) for _ in range(n)]
    crop = RandSpatialCrop(roi_size=[int(0.4 * d) for d in shape], random_size=True)
    crop.set_random_state(6)
    theirs = []
    for _ in range(n):
        crop.randomize(shape)
        theirs.append((tuple(s.start for s in crop._slices), tuple(s.stop - s.start for s in crop._slices)))
    for axis, d in enumerate(shape):
        for part, bounds in ((1, (int(0.4 * d), d)), (0, (0, d - int(0.4 * d)))):  # sizes, then starts
            mine = np.array([box[part][axis] for box in ours], dtype=np.float64)
            monai = np.array([box[part][axis] for box in theirs], dtype=np.float64)
            assert set(np.unique(mine)) == set(np.unique(monai)) <= set(range(bounds[0], bounds[1] + 1))
            assert abs(mine.mean() - monai.mean()) < 0.05 * d and abs(mine.std() - monai.std()) < 0.05 * d
    assert all(start + size <= d for box in ours for start, size, d in zip(*box, shape, strict=True))


@pytest.mark.parametrize(
    ("shapes", "size"),
    [
        ([(1, 20, 18), (1, 16, 24), (1, 24, 24), (1, 12, 12)], (16, 16)),  # padded or cropped first
        ([(1, 8, 12, 12)] * 3 + [(1, 6, 14, 10)], (8, 12, 12)),
    ],
)
def test_radiology_view_pairs_are_the_same_made_on_the_device(shapes, size):
    """Every step drawn on the loader and applied as a batch gives the CPU path's views, noise included
    (per-sample generators); blur and gamma on too."""
    views = radiology_views(size, 2, blur_prob=0.5, gamma_prob=0.5)
    torch.manual_seed(7)
    samples = [{"image": torch.rand(shape), "z": k} for k, shape in enumerate(shapes * 2)]
    cpu, device = both_ways(views, samples)
    assert [v.shape for v in device["views"]] == [(len(samples), 1, *size)] * 2
    assert_same_views(cpu, device)
    assert not torch.equal(device["views"][0], device["views"][1])


def test_radiology_geometric_pairs_are_the_same_made_on_the_device():
    """Slices of different sizes go to the device zero-padded to the largest of the batch
    (collate_padded); the views and geometry are those the CPU makes from each slice itself."""
    from torch.utils.data import default_collate

    from medssl.data.datamodules.volumes import collate_padded
    from medssl.data.seeding import seeded
    from medssl.data.view_ops import DrawViewsd

    views = GeometricViewsd.pair(radiology_geometric_view(12))
    torch.manual_seed(8)
    samples = [{"image": torch.rand(1, *shape)} for shape in [(20, 16), (14, 22), (20, 16), (16, 16)] * 2]
    cpu, drawn = [], []
    for index, sample in enumerate(samples):
        with seeded(views, 0, 0, index):
            cpu.append(views(dict(sample)))
        with seeded(views, 0, 0, index):
            drawn.append(DrawViewsd(views)(dict(sample)))
    device = views.apply_batch(collate_padded(drawn))
    expected = default_collate(cpu)
    assert_same_views(expected, device)
    for g_cpu, g_device in zip(expected["geometry"], device["geometry"], strict=True):
        torch.testing.assert_close(g_device, g_cpu)


def test_geometric_slice_pairs_of_one_size_are_the_same_both_ways():
    views = GeometricViewsd.pair(radiology_geometric_view(12, flip_prob=[0.5, 0.5]))
    torch.manual_seed(9)
    cpu, device = both_ways(views, [{"image": torch.rand(1, 18, 18)} for _ in range(6)])
    assert_same_views(cpu, device)


@pytest.mark.parametrize(
    ("mode", "spatial_size", "geometric"),
    [("slices", (24, 24), False), ("patches", (8, 12, 12), False), ("slices", (16, 16), True)],
)
def test_volume_datamodule_device_views_equal_cpu_views(volume_cache, mode, spatial_size, geometric):
    from medssl.data.datamodules.volumes import VolumeDataModule

    def first_batch(views_on: str) -> dict:
        dm = VolumeDataModule(
            str(volume_cache),
            mode=mode,
            spatial_size=spatial_size,
            geometric=geometric,
            patches_per_volume=4,
            batch_size=4,
            num_workers=0,
            views_on=views_on,
        )
        batch, views = first_training_batch(dm)
        sent.append(batch.get("image", torch.empty(0)).dtype)
        return views

    sent: list[torch.dtype] = []
    cpu, device = first_batch("cpu"), first_batch("device")
    assert sent[1] == torch.float16  # a float16 cache travels as float16, exactly
    assert "view_params" not in device and "image" not in device
    assert [v.shape for v in device["views"]] == [(4, 1, *spatial_size)] * 2
    assert_same_views(cpu, device)
    assert device["volume_id"] == cpu["volume_id"] and torch.equal(device["index"], cpu["index"])
    if geometric:
        for g_cpu, g_device in zip(cpu["geometry"], device["geometry"], strict=True):
            torch.testing.assert_close(g_device, g_cpu)
