"""The joint 2D/3D method's volume views and Alice's pairs as device views: each pool transform batched
against its per-sample path (and its MONAI oracle), the parameter distributions against the MONAI
transforms the pool used before, and the loader-draws/device-applies path against the CPU path,
through the transforms and through the DataModule."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import default_collate

from medssl.data.correspondence import PairViews, SameVolumeSampler, flip_rotate, flip_rotate_batch
from medssl.data.datamodules import VolumeDataModule
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.view_ops import DrawViewsd, apply_device_views
from medssl.data.volume_views import (
    VOLUME_VIEW_TRANSFORMS,
    RandAnisotropy,
    RandBiasField,
    VolumeViewsd,
    down_up,
    flip_where,
    view_transform,
)
from medssl.data.volumes import VolumePairDataset
from tests.views import assert_same_views, both_ways, first_training_batch

WINDOW = (4, 12, 12)


def stacks(n: int, shape=(6, 14, 13), labels: bool = False) -> list[dict]:
    """``n`` random slice stacks (a label map each when ``labels``)."""
    generator = torch.Generator().manual_seed(n)
    samples = []
    for k in range(n):
        sample = {"image": torch.randn(1, *shape, generator=generator), "volume_id": f"v{k}"}
        if labels:
            sample["label"] = torch.randint(0, 3, (1, *shape), generator=generator)
        samples.append(sample)
    return samples


# -- each pool transform: batched == per sample ------------------------------------------------------
@pytest.mark.parametrize("name", VOLUME_VIEW_TRANSFORMS)
def test_each_pool_transform_applies_a_batch_as_it_applies_each_sample(name):
    op = view_transform(name)
    torch.manual_seed(0)
    params = [op.draw(WINDOW) for _ in range(4)]
    images = torch.randn(4, 1, *WINDOW)
    expected = torch.stack([op.apply(images[b], params[b]) for b in range(4)])
    got = op.apply_batch(images, default_collate(params))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.equal(got, images)


def test_batched_anisotropy_is_pytorchs_area_down_and_linear_up_along_each_samples_axis():
    # odd and even sizes, factors whose low size rounds half to even (12 / 4.8 = 2.5 -> 2), the extremes
    op = RandAnisotropy()
    images = torch.randn(6, 1, 7, 12, 11)
    params = {"axis": torch.tensor([0, 1, 2, 1, 0, 2]), "factor": torch.tensor([1.5, 4.8, 5.0, 2.2, 3.5, 1.7])}
    got = op.apply_batch(images, params)
    for b in range(6):
        expected = down_up(images[b], int(params["axis"][b]), float(params["factor"][b]))
        torch.testing.assert_close(got[b], expected, atol=1e-5, rtol=0)
        unchanged = [a for a in range(3) if a != int(params["axis"][b])]
        assert not torch.allclose(got[b], images[b]) and unchanged  # it smooths along its own axis only
    # an image constant along the chosen axis comes back unchanged: the resampling keeps the slice grid
    planes = torch.randn(1, 1, 1, 12, 11).expand(2, 1, 7, 12, 11)
    same = op.apply_batch(planes, {"axis": torch.tensor([0, 0]), "factor": torch.tensor([2.6, 4.1])})
    torch.testing.assert_close(same, planes, atol=1e-5, rtol=0)


def test_the_bias_field_is_monais_field_for_the_same_coefficients():
    from monai.transforms.intensity.array import RandBiasField as MonaiBiasField

    image = torch.rand(1, 5, 9, 7) + 0.5
    monai = MonaiBiasField(degree=3, coeff_range=(0.0, 0.1), prob=1.0)
    op = RandBiasField(degree=3, coeff_range=(0.0, 0.1))
    torch.manual_seed(1)
    params = op.draw((5, 9, 7))
    monai._coeff, monai._do_transform = params["coeffs"].double().tolist(), True
    expected = torch.as_tensor(np.asarray(monai(image, randomize=False)))
    torch.testing.assert_close(op.apply(image, params), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, image, atol=1e-2)  # a field of this size changes the image


# -- parameter distributions against the MONAI transforms the pool used ------------------------------
#: draws per comparison: MONAI's flip and noise transforms cost milliseconds a call (noise: from a 2048-voxel
#: image, so its estimated standard deviation is within 2 %)
DRAWS = {"flip": 240, "noise": 500}
NOISE_SHAPE = (8, 16, 16)


def p_value(result: Any) -> float:
    """A scipy test's p-value (scipy's result classes are opaque to the type checker)."""
    return float(result.pvalue)


def _monai_pool(name: str):
    """The pool's MONAI transform of ``name`` before device views (array transforms; flip: the dict one)."""
    from monai.transforms.compose import OneOf
    from monai.transforms.intensity.array import (
        RandAdjustContrast,
        RandBiasField,
        RandGaussianNoise,
        RandGaussianSmooth,
    )
    from monai.transforms.spatial.array import RandAffine
    from monai.transforms.spatial.dictionary import RandFlipd

    return {
        "flip": lambda: OneOf([RandFlipd(["image"], prob=1.0, spatial_axis=axes) for axes in (1, 2, (1, 2))]),
        "affine": lambda: RandAffine(prob=1.0, rotate_range=(0.26, 0.0, 0.0), scale_range=(0.0, 0.1, 0.1)),
        "noise": lambda: RandGaussianNoise(prob=1.0, std=0.25),
        "blur": lambda: RandGaussianSmooth(sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5), sigma_z=(0.25, 1.5), prob=1.0),
        "bias_field": lambda: RandBiasField(degree=3, coeff_range=(0.0, 0.1), prob=1.0),
        "gamma": lambda: RandAdjustContrast(prob=1.0, gamma=(0.74, 1.35)),
    }[name]().set_random_state(seed=0)


def _flip_index(image: torch.Tensor, flipped: torch.Tensor) -> int:
    """Which of the in-plane flips (Y, X, both) turned ``image`` into ``flipped``."""
    (index,) = [k for k, dims in enumerate(((2,), (3,), (2, 3))) if torch.equal(image.flip(dims), flipped)]
    return index


def _monai_draws(name: str) -> np.ndarray:
    """``[DRAWS, n]`` of the MONAI transform's parameters (noise: the standard deviation of its noise)."""
    transform = _monai_pool(name)
    distinct = torch.randperm(4).float().reshape(1, 1, 2, 2)
    rows = []
    for _ in range(DRAWS.get(name, 1000)):
        if name == "flip":
            rows.append([_flip_index(distinct, torch.as_tensor(transform({"image": distinct})["image"]))])
        elif name == "affine":
            transform.randomize()
            grid = transform.rand_affine_grid
            rows.append([*grid.rotate_params, *grid.scale_params])
        elif name == "noise":
            rows.append([float(np.std(np.asarray(transform(torch.zeros(1, *NOISE_SHAPE)))))])
        elif name == "blur":
            transform.randomize(None)
            rows.append([transform.x, transform.y, transform.z])
        elif name == "bias_field":
            transform.randomize(img_size=WINDOW)
            rows.append(transform._coeff)
        else:
            transform.randomize(None)
            rows.append([transform.gamma_value])
    return np.asarray(rows, dtype=np.float64)


def _our_draws(name: str) -> np.ndarray:
    """The same quantities drawn by the pool's ViewOp."""
    op = view_transform(name)
    torch.manual_seed(0)
    rows = []
    for _ in range(DRAWS.get(name, 1000)):
        params = op.draw(WINDOW)
        if name == "flip":
            rows.append(
                [
                    {(False, True, False): 0, (False, False, True): 1, (False, True, True): 2}[
                        tuple(params["flip"].tolist())
                    ]
                ]
            )
        elif name == "affine":
            rows.append([*params["angles"].tolist(), *params["scales"].tolist()])
        elif name == "noise":
            rows.append([float(op.apply(torch.zeros(1, *NOISE_SHAPE), params).std(unbiased=False))])
        elif name == "blur":
            rows.append(params["sigma"].tolist())
        elif name == "bias_field":
            rows.append(params["coeffs"].tolist())
        else:
            rows.append([float(params["gamma"])])
    return np.asarray(rows, dtype=np.float64)


@pytest.mark.parametrize("name", ["flip", "affine", "noise", "blur", "bias_field", "gamma"])
def test_pool_parameters_follow_the_distributions_of_the_monai_transforms_they_replace(name):
    ours, theirs = _our_draws(name), _monai_draws(name)
    assert ours.shape == theirs.shape
    if name == "flip":  # which of the three flips: the same frequencies
        counts = [np.bincount(x[:, 0].astype(int), minlength=3) for x in (ours, theirs)]
        assert p_value(stats.chi2_contingency(counts)) > 1e-3 and min(counts[0]) > 0
        return
    for column in range(ours.shape[1]):
        a, b = ours[:, column], theirs[:, column]
        if np.ptp(b) == 0:  # a fixed entry (no rotation about the in-plane axes, no slice scaling)
            np.testing.assert_allclose(a, b, atol=1e-7)
            continue
        assert p_value(stats.ks_2samp(a, b)) > 1e-3, f"{name} parameter {column} differs from MONAI's"
        if name != "noise":  # uniform draws: the same support (KS misses small shifts of an end)
            for ours_end, theirs_end in ((a.min(), b.min()), (a.max(), b.max())):
                assert abs(ours_end - theirs_end) < 0.02 * np.ptp(b), f"{name} parameter {column}'s range"


def test_anisotropy_draws_a_uniform_axis_and_factor():
    op = RandAnisotropy()
    torch.manual_seed(0)
    drawn = [op.draw(WINDOW) for _ in range(1000)]
    axes = np.bincount([int(p["axis"]) for p in drawn], minlength=3)
    assert p_value(stats.chisquare(axes)) > 1e-3
    factors = [float(p["factor"]) for p in drawn]
    assert p_value(stats.kstest(factors, stats.uniform(1.5, 3.5).cdf)) > 1e-3


# -- VolumeViewsd: the loader draws, the device makes the views --------------------------------------
@pytest.mark.parametrize(
    ("transforms_per_view", "keep_image", "shape"),
    [(2, True, (6, 14, 13)), (3, False, (3, 14, 10)), (1, True, (4, 12, 12))],
    ids=["two-each", "three-each-padded-no-image", "one-each"],
)
def test_volume_views_made_on_the_device_equal_the_cpu_views(transforms_per_view, keep_image, shape):
    views = VolumeViewsd(WINDOW, transforms_per_view=transforms_per_view, keep_image=keep_image)
    samples = stacks(4, shape, labels=True)
    for epoch in range(3):  # different subsets and orders: every transform at every position
        cpu, device = both_ways(views, samples, epoch=epoch)
        assert_same_views(cpu, device)
        assert set(cpu) == set(device) and device["view_transforms"] == cpu["view_transforms"]
        assert ("image" in device) == keep_image and "view_params" not in device
        assert torch.equal(device["label"], cpu["label"]) and device["label"].dtype == torch.int64
        if keep_image:
            assert torch.equal(device["image"], cpu["image"])
    drawn = default_collate([DrawViewsd(views)(dict(s)) for s in samples])
    in_pieces = apply_device_views(views, drawn, piece=3)  # the hook's pieces
    assert_same_views(views.apply_batch(drawn), in_pieces)


def test_device_views_keep_every_slice_at_its_index():
    # slice z of each stack is the constant z + 1: flips and the in-plane affine keep each slice's
    # centre at its value, so no content moved between slices
    planes = (torch.arange(WINDOW[0]).float() + 1)[:, None, None].expand(WINDOW)[None]
    views = VolumeViewsd(WINDOW, transforms_per_view=1, transforms=["flip", "affine"])
    samples = [{"image": planes.clone()} for _ in range(3)]
    _, device = both_ways(views, samples)
    expected = torch.arange(WINDOW[0]).float() + 1
    for view in device["views"]:
        centre = view[:, 0, :, 5:7, 5:7]  # [B, D, 2, 2]
        torch.testing.assert_close(centre, expected[None, :, None, None].expand_as(centre), atol=1e-4, rtol=0)


# -- Alice's pairs ------------------------------------------------------------------------------------
def test_batched_flips_and_turns_equal_the_per_sample_ones():
    combos = list(itertools.product([False, True], [False, True], [False, True], range(4)))
    views = torch.randn(len(combos), 1, 3, 5, 5)
    flips = torch.tensor([c[:3] for c in combos])
    rot = torch.tensor([c[3] for c in combos])
    expected = torch.stack([flip_rotate(views[b], flips[b], rot[b]) for b in range(len(combos))])
    assert torch.equal(flip_rotate_batch(views, flips, rot), expected)
    unturned = torch.stack([flip_rotate(views[b], flips[b], 0) for b in range(len(combos))])
    assert torch.equal(flip_where(views, flips, (0, 1, 2)), unturned)  # an accelerator's route
    flat = torch.randn(4, 1, 2, 4, 6)  # non-square H × W: half turns only
    flips, rot = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]).bool(), torch.tensor([0, 2, 2, 0])
    expected = torch.stack([flip_rotate(flat[b], flips[b], rot[b]) for b in range(4)])
    assert torch.equal(flip_rotate_batch(flat, flips, rot), expected)


def test_pairs_flipped_on_the_device_equal_the_cpu_pairs_and_keep_their_correspondences(volume_cache):
    sampler = SameVolumeSampler(crop_size=(4, 12, 12), points=6)

    def batch(transform) -> dict:
        dataset = VolumePairDataset(volume_cache, sampler=sampler, splits=None, transform=transform, seed=2)
        return default_collate([dataset[(k, 1)] for k in range(len(dataset))])

    cpu = batch(PairViews())
    device = PairViews().apply_batch(batch(DrawViewsd(PairViews())))
    assert set(device) == set(cpu) and "augments" not in cpu
    assert all(torch.equal(a, b) for a, b in zip(device["views"], cpu["views"], strict=True))
    a, b = device["points_a"].long(), device["points_b"].long()
    for k in range(len(a)):
        view_a, view_b = device["views"][0][k, 0], device["views"][1][k, 0]
        assert torch.equal(view_a[a[k, :, 0], a[k, :, 1], a[k, :, 2]], view_b[b[k, :, 0], b[k, :, 1], b[k, :, 2]])
    plain = VolumePairDataset(volume_cache, sampler=sampler, splits=None, seed=2)[(0, 1)]  # default: PairViews
    assert torch.equal(plain["views"][0], cpu["views"][0][0])


# -- through the DataModule ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["stacks", "pairs"])
def test_a_device_views_training_batch_equals_the_cpu_batch(volume_cache, mode):
    def batch(views_on: str) -> dict:
        module = VolumeDataModule(
            str(volume_cache),
            mode=mode,
            spatial_size=WINDOW,
            stack_depth=8,
            batch_size=1,
            num_workers=0,
            views_on=views_on,
        )
        sent, views = first_training_batch(module, epoch=1)
        assert isinstance(module.train_dataloader().sampler, BlockShuffleSampler)
        if mode == "stacks" and views_on == "device":  # the float16 cache's windows travel as float16
            assert sent["image"].dtype == torch.float16 and "views" not in sent
        return views

    cpu, device = batch("cpu"), batch("device")
    assert set(cpu) == set(device) and "view_params" not in device
    assert_same_views(cpu, device)
    for key, value in cpu.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(device[key], value), key


def test_stacks_and_images_make_both_parts_views_on_the_device(volume_cache):
    """The joint 2D/3D DataModule: its hook makes the stacks' and the 2D slices' device views, each as
    its part's CPU views."""
    from medssl.data import StacksAndImagesDataModule

    def batch(views_on: str) -> dict:
        def part(mode: str, size: tuple[int, ...], batch_size: int) -> VolumeDataModule:
            return VolumeDataModule(
                str(volume_cache), mode, size, batch_size=batch_size, num_workers=0, stack_depth=8, views_on=views_on
            )

        module = StacksAndImagesDataModule(part("stacks", WINDOW, 1), part("slices", (16, 16), 2))
        module.setup("fit")
        sent = {}
        for name, datamodule in (("volumes", module.volumes), ("images", module.images)):
            loader = datamodule.train_dataloader()
            assert isinstance(loader.sampler, BlockShuffleSampler)
            loader.sampler.set_epoch(1)
            sent[name] = next(iter(loader))
        return module.on_after_batch_transfer(sent, 0)

    cpu, device = batch("cpu"), batch("device")
    for part in ("volumes", "images"):
        assert set(device[part]) == set(cpu[part]) and "view_params" not in device[part]
        assert_same_views(cpu[part], device[part])
