"""Histology views as device views: each colour step's batched form equals its per-sample form, whole
views drawn on the loader and made per batch equal the per-sample views, and the draws have the
distributions the views promise."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import default_collate

from medssl.data.batched_ops import separable_filter
from medssl.data.geometric_views import GeometricViewsd, histology_geometric_view
from medssl.data.seeding import seeded
from medssl.data.transforms import (
    ColorJitterd,
    HEDJitterd,
    MultiViewd,
    RandFlipRotate90d,
    RandGaussianBlurd,
    RandGreyd,
    RandomViewOp,
    RandResizedCropd,
    RandSolarized,
    histology_photometric,
    histology_view,
)
from medssl.data.view_ops import Compose, DrawViewsd, apply_device_views
from medssl.geometry import fields
from tests.views import assert_same_views, both_ways, first_training_batch

STEPS = {
    "colour": ColorJitterd(brightness=0.6, contrast=0.6, saturation=0.6, hue=0.2, prob=0.6),
    "colour, two steps off": ColorJitterd(brightness=0.5, contrast=0.0, saturation=0.5, hue=0.0, prob=0.6),
    "stain": HEDJitterd(sigma=0.3, bias=0.3, prob=0.6),
    "blur": RandGaussianBlurd(sigma=(0.1, 2.5), prob=0.6),
    "grey": RandGreyd(prob=0.5),
    "solarise": RandSolarized(prob=0.5),
    "flip, rot90": RandFlipRotate90d(prob=0.8),
    "crop": RandResizedCropd(12),
}


def _draws(step: RandomViewOp, n: int, shape=(20, 20), seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return default_collate([step.draw(shape) for _ in range(n)])


@pytest.mark.parametrize("name", list(STEPS))
def test_a_batched_step_equals_the_step_per_sample(name):
    """Per-sample parameters drawn once; the batch (samples on and off alike) gives each sample's image."""
    step = STEPS[name]
    params = _draws(step, 10)
    assert 0 < int(params["on"].sum()) < 10 or name == "crop"  # skipped samples are part of the check
    images = torch.rand(10, 3, 20, 20)
    images[:, :, :4] = images[:, :, :4].round()  # saturated pixels, where clamps and logs bite
    expected = torch.stack([step.apply(images[i], {k: v[i] for k, v in params.items()}) for i in range(10)])
    batched = step.apply_batch(images, params)
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=0)
    off = ~params["on"]
    assert torch.equal(batched[off], expected[off]) or name == "crop"  # skipped on a CPU: untouched
    # what a GPU runs: every sample through the batched step, the skipped ones with identity parameters
    torch.testing.assert_close(step.transform_batch(images, params), expected, atol=1e-5, rtol=0)
    assert torch.equal(images, images.clone()) and images.dtype == torch.float32


def test_blur_kernels_longer_than_a_samples_radius_change_nothing():
    """Off a CPU the batch is filtered with the longest possible kernel; zeros beyond a sample's own
    radius keep its blur (reflect padding included)."""
    step = RandGaussianBlurd(sigma=(0.1, 2.5))
    params = _draws(step, 6, seed=1)
    images = torch.rand(6, 3, 20, 20)
    short = step.transform_batch(images, params)  # the batch's own largest radius
    kernels = step.kernels(params["sigma"], largest=8)
    assert kernels.shape == (6, 17) and bool((kernels[:, 0] == 0).all())
    torch.testing.assert_close(separable_filter(images, [kernels, kernels]), short, atol=1e-6, rtol=0)


def test_grey_and_solarisation_do_what_they_say():
    image = torch.rand(3, 8, 8)
    grey = RandGreyd().apply(image, {"on": torch.tensor(True)})
    luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    assert all(torch.allclose(grey[c], luma) for c in range(3))
    solarised = RandSolarized(threshold=0.5).apply(image, {"on": torch.tensor(True)})
    assert torch.equal(solarised, torch.where(image >= 0.5, 1 - image, image))
    assert torch.equal(RandSolarized().apply(image, {"on": torch.tensor(False)}), image)


def _tiles(n: int, side: int = 24) -> list[dict]:
    torch.manual_seed(5)
    return [{"image": torch.randint(0, 256, (3, side, side), dtype=torch.uint8), "tile": k} for k in range(n)]


@pytest.mark.parametrize(
    "views",
    [
        MultiViewd([histology_view(16, grey_prob=0.4, solarize_prob=0.4)] * 2),
        MultiViewd.multi_crop(2, 2, global_size=16, local_size=8, grey_prob=0.3, solarize_prob=0.3),
        MultiViewd([histology_view(16)] * 2),
    ],
    ids=["pair", "multi-crop", "default pair"],
)
def test_histology_views_drawn_on_the_loader_and_made_per_batch_equal_the_per_sample_views(views):
    cpu, device = both_ways(views, _tiles(6))
    assert_same_views(cpu, device)
    assert [tuple(v.shape) for v in device["views"]][-1] == (6, 3, *device["views"][-1].shape[-2:])
    drawn = []
    for index, sample in enumerate(_tiles(6)):
        with seeded(views, 0, 0, index):
            drawn.append(DrawViewsd(views)(sample))
    assert_same_views(cpu, apply_device_views(views, default_collate(drawn)))  # in the CPU's pieces of 2


def test_histology_geometric_pair_is_the_same_either_way():
    views = GeometricViewsd.pair(histology_geometric_view(16, scale=(0.3, 1.0), grey_prob=0.3, solarize_prob=0.3))
    cpu, device = both_ways(views, _tiles(6))
    assert_same_views(cpu, device)
    for g_cpu, g_device in zip(cpu["geometry"], device["geometry"], strict=True):
        torch.testing.assert_close(g_device, g_cpu)


def test_the_histology_view_is_the_crop_flip_rotation_and_colour_steps_it_replaced():
    """Same draws (and generator state after), same pixels as the step-by-step view it used to be."""
    image = _tiles(1, 32)[0]["image"]
    steps = Compose([RandResizedCropd(16), RandFlipRotate90d(), *histology_photometric(blur_prob=0.5)])
    for seed in range(8):
        torch.manual_seed(seed)
        old = steps({"image": image})["image"]
        after_old = torch.rand(())
        torch.manual_seed(seed)
        new = histology_view(16)({"image": image})["image"]
        assert torch.rand(()) == after_old
        torch.testing.assert_close(new, old, atol=1e-5, rtol=0)


def test_device_histology_views_differ_across_epochs_and_reproduce_from_a_seed():
    views = MultiViewd([histology_view(16)] * 2)
    sample = _tiles(1)[0]

    def made(seed: int, epoch: int) -> list[torch.Tensor]:
        with seeded(views, seed, epoch, 0):
            drawn = DrawViewsd(views)(dict(sample))
        return views.apply_batch(default_collate([drawn]))["views"]

    first, again, next_epoch, other_seed = made(0, 0), made(0, 0), made(0, 1), made(1, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], next_epoch[0]) and not torch.equal(first[0], other_seed[0])


def _binomial_ok(hits: torch.Tensor, prob: float) -> bool:
    n = hits.numel()
    return abs(float(hits.float().sum()) - n * prob) <= 4 * math.sqrt(n * prob * (1 - prob))


def _uniform_ok(values: torch.Tensor, low: float, high: float) -> bool:
    """In range and close to the uniform's quantiles (Kolmogorov-Smirnov distance < 0.06)."""
    ranks = (values.sort().values - low) / (high - low)
    expected = (torch.arange(len(values)) + 0.5) / len(values)
    return bool((values >= low).all() and (values <= high).all()) and float((ranks - expected).abs().max()) < 0.06


def test_histology_view_draws_have_the_promised_distributions():
    view = histology_view(16, blur_prob=0.5, grey_prob=0.3, solarize_prob=0.2)
    torch.manual_seed(0)
    p = default_collate([view.draw((32, 32)) for _ in range(2000)])
    g = fields(p["geometry"])
    assert _binomial_ok(g.flip[:, 1] > 0.5, 0.5) and bool((g.flip[:, 0] == 0).all())
    assert all(_binomial_ok(g.rot[:, 0] == k, 0.25) for k in range(4))
    area = g.size.prod(-1)  # crops of 20-100 % of the tile, rounded to pixels
    assert float(area.min()) > 0.17 and float(area.max()) <= 1.0

    def step(k: int, name: str) -> torch.Tensor:
        return p[f"photometric.0.{k}.{name}"]

    on = {k: step(k, "on") for k in range(5)}
    for k, prob in enumerate([0.8, 0.5, 0.3, 0.5, 0.2]):  # colour, stain, grey, blur, solarise
        assert _binomial_ok(on[k], prob), (k, float(on[k].float().mean()))
    factor, order = step(0, "factor")[on[0]], step(0, "order")[on[0]]
    for k, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.05, 0.05)]):
        assert _uniform_ok(factor[:, k], low, high), k
        assert _binomial_ok(order[:, 0] == k, 0.25)  # every step comes first as often
    assert bool((step(0, "factor")[~on[0]] == torch.tensor([1.0, 1.0, 1.0, 0.0])).all())  # identity when off
    assert _uniform_ok(step(1, "alpha")[on[1]].flatten(), 0.95, 1.05)
    assert _uniform_ok(step(1, "beta")[on[1]].flatten(), -0.05, 0.05)
    assert _uniform_ok(step(3, "sigma")[on[3]], 0.1, 2.0) and bool((step(3, "sigma")[~on[3]] == 0).all())


def test_tile_datamodule_views_made_on_the_device_equal_views_made_by_the_loader(split_cache):
    from medssl.data.datamodules.tiles import TileDataModule

    batches = {}
    for views_on in ("cpu", "device"):
        module = TileDataModule(
            str(split_cache),
            batch_size=4,
            num_workers=0,
            view_size=16,
            grey_prob=0.5,
            solarize_prob=0.5,
            views_on=views_on,
        )
        batches[views_on] = first_training_batch(module)[1]
    assert "view_params" not in batches["device"] and "image" not in batches["device"]
    assert_same_views(batches["cpu"], batches["device"])
