"""Device views: the batched crop/resize/flip/rot90 against the per-sample renderer, and the DataModule
switch that moves views from the loader to the device."""

from __future__ import annotations

import pytest
import torch

from medssl.data.batched_ops import render_views, render_views_by_matrices, resize_weights
from medssl.data.geometric_views import GeometricViewsd, RandGeometricViewd, render_view
from tests.views import assert_same_views, both_ways


@pytest.mark.parametrize(
    ("shape", "size", "rotate", "scale"),
    [
        ((40, 37), (24, 24), True, (0.2, 1.0)),  # crops shrunk: antialiased
        ((30, 50), (16, 20), False, (0.2, 1.0)),  # non-square views
        ((12, 20, 18), (8, 10, 10), True, (0.2, 1.0)),  # 3D
        ((24, 24), (40, 40), True, (0.2, 1.0)),  # crops enlarged
        ((10, 16, 16), (12, 20, 20), True, (0.5, 1.0)),  # 3D, enlarged
    ],
)
def test_batched_views_equal_the_per_sample_renderer(shape, size, rotate, scale):
    torch.manual_seed(0)
    view = RandGeometricViewd(size, scale=scale, flip_prob=[0.5] * len(shape), rotate=rotate)
    images = torch.randint(0, 256, (12, 2, *shape), dtype=torch.uint8)
    geometry = torch.stack([view.draw_geometry(*shape) for _ in range(12)])
    expected = torch.stack([render_view(images[i], geometry[i], size) for i in range(12)])
    torch.testing.assert_close(render_views(images, geometry, size), expected, atol=1e-5, rtol=0)
    sizes = tuple(size)  # the accelerator's route, run here on the CPU
    torch.testing.assert_close(
        render_views_by_matrices(images.float() / 255, geometry, sizes), expected, atol=1e-5, rtol=0
    )


def test_resize_weights_are_pytorchs_antialiased_filter():
    """Row sums are 1 and a crop resized by the matrix equals F.interpolate(antialias=True) of the crop."""
    x = torch.rand(1, 1, 1, 30, dtype=torch.float64)
    for start, length, out in [(3, 20, 7), (0, 30, 30), (5, 9, 25), (2, 27, 13)]:
        box = torch.tensor([start], dtype=torch.float64), torch.tensor([length], dtype=torch.float64)
        w = resize_weights(*box, 30, out)[0]
        crop = x[..., start : start + length]
        ref = torch.nn.functional.interpolate(crop, size=(1, out), mode="bilinear", antialias=True, align_corners=False)
        torch.testing.assert_close(w.sum(1), torch.ones(out, dtype=torch.float64))
        torch.testing.assert_close(x[0, 0, 0] @ w.T, ref[0, 0, 0], atol=1e-12, rtol=0)


def test_geometric_pair_is_the_same_drawn_on_the_loader_and_made_on_the_device():
    views = GeometricViewsd.pair(RandGeometricViewd(16, rotate=True))
    samples = [{"image": torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8), "label": k} for k in range(6)]
    cpu, device = both_ways(views, samples)
    assert_same_views(cpu, device)
    for g_cpu, g_device in zip(cpu["geometry"], device["geometry"], strict=True):
        torch.testing.assert_close(g_device, g_cpu)
    assert "image" not in device and "view_params" not in device and device["label"].tolist() == list(range(6))


def test_views_made_in_pieces_equal_views_made_at_once():
    """On a CPU the hook makes views two samples at a time (cache-sized pieces); the batch is the same."""
    from torch.utils.data import default_collate

    from medssl.data.view_ops import DrawViewsd, apply_device_views

    views = GeometricViewsd.pair(RandGeometricViewd(12, rotate=True))
    torch.manual_seed(3)
    samples = [
        {"image": torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8), "slide_id": f"s{k}", "tile": k}
        for k in range(5)
    ]
    batch = default_collate([DrawViewsd(views)(s) for s in samples])
    whole, pieces = apply_device_views(views, batch, piece=5), apply_device_views(views, batch, piece=2)
    assert pieces["slide_id"] == whole["slide_id"] == [f"s{k}" for k in range(5)]
    assert torch.equal(pieces["tile"], whole["tile"])
    for key in ("views", "geometry"):
        for a, b in zip(whole[key], pieces[key], strict=True):
            torch.testing.assert_close(b, a)
    assert apply_device_views(views, {"image": batch["image"]}) is not None  # eval batches pass through


def test_auto_makes_device_views_when_the_trainer_trains_on_an_accelerator(split_cache):
    from types import SimpleNamespace

    from medssl.data import TileDataModule

    on = {}
    for device in ("cpu", "cuda"):
        datamodule = TileDataModule(str(split_cache), batch_size=4, num_workers=0, view_size=16)
        datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))  # type: ignore[assignment]
        datamodule.setup("fit")
        on[device] = datamodule.device_views is not None
    assert on == {"cpu": False, "cuda": True}
    assert TileDataModule(str(split_cache), views_on="device").makes_device_views()  # without a Trainer
    with pytest.raises(ValueError, match="views_on"):
        TileDataModule(str(split_cache), views_on="gpu")
