"""Histology views: colour deconvolution against scikit-image, geometry, stain jitter, multi-view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color, data

from medssl.data.transforms import (
    ColorJitterd,
    HEDJitterd,
    MultiViewd,
    RandFlipRotate90d,
    RandGaussianBlurd,
    RandResizedCropd,
    hed_to_rgb,
    histology_view,
    rgb_to_hed,
    to_float,
)


@pytest.fixture(scope="module")
def ihc() -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data.immunohistochemistry()[:128, :128].transpose(2, 0, 1)))


def test_colour_deconvolution_matches_scikit_image(ihc):
    ours = rgb_to_hed(to_float(ihc).double()).numpy().transpose(1, 2, 0)
    theirs = color.rgb2hed(ihc.numpy().transpose(1, 2, 0))
    np.testing.assert_allclose(np.maximum(ours, 0), theirs, atol=1e-6)  # skimage clips at 0
    back = hed_to_rgb(rgb_to_hed(to_float(ihc).double()))
    torch.testing.assert_close(back, to_float(ihc).double(), atol=2e-6, rtol=0)  # 0 is clamped to 1e-6


def test_hed_jitter_is_identity_at_zero_strength_and_moves_stains_otherwise(ihc):
    torch.manual_seed(0)
    same = HEDJitterd(sigma=0.0, bias=0.0)({"image": ihc})["image"]
    torch.testing.assert_close(same, to_float(ihc), atol=1e-5, rtol=0)
    jittered = HEDJitterd(sigma=0.3, bias=0.0)({"image": ihc})["image"]
    ratio = rgb_to_hed(jittered.double()) / rgb_to_hed(to_float(ihc).double())
    strong = rgb_to_hed(to_float(ihc).double()).abs() > 0.05  # away from clipping at 0 and 1
    per_stain = [ratio[k][strong[k]].median() for k in range(3)]
    assert all(0.7 <= float(r) <= 1.3 for r in per_stain) and len({round(float(r), 3) for r in per_stain}) > 1


def test_flips_and_rotations_only_permute_pixels(ihc):
    torch.manual_seed(1)
    out = RandFlipRotate90d()({"image": ihc})["image"]
    assert sorted((out * 255).round().flatten().tolist()) == sorted(ihc.float().flatten().tolist())


def test_random_resized_crop_size_and_content(ihc):
    torch.manual_seed(2)
    out = RandResizedCropd(64, scale=(1.0, 1.0), ratio=(1.0, 1.0))({"image": ihc})["image"]
    assert out.shape == (3, 64, 64)
    # Scale 1 and ratio 1 is the whole tile, downsampled with antialiasing: its mean colour is kept.
    torch.testing.assert_close(out.mean(dim=(1, 2)), to_float(ihc).mean(dim=(1, 2)), atol=2e-3, rtol=0)


def test_blur_keeps_mean_and_lowers_high_frequencies(ihc):
    torch.manual_seed(3)
    image = to_float(ihc)
    out = RandGaussianBlurd(sigma=(2.0, 2.0))({"image": ihc})["image"]
    torch.testing.assert_close(out.mean(), image.mean(), atol=5e-3, rtol=0)
    assert out.diff(dim=-1).abs().mean() < 0.5 * image.diff(dim=-1).abs().mean()


def test_colour_jitter_stays_in_range_and_changes_colour(ihc):
    torch.manual_seed(4)
    out = ColorJitterd(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)({"image": ihc})["image"]
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, to_float(ihc))


def test_views_differ_from_each_other_and_across_epochs_but_reproduce_with_a_seed(ihc):
    pair = MultiViewd([histology_view(64)] * 2)
    torch.manual_seed(10)
    epoch_1 = pair({"image": ihc, "slide_id": "s"})
    torch.manual_seed(11)
    epoch_2 = pair({"image": ihc, "slide_id": "s"})
    torch.manual_seed(10)
    again = pair({"image": ihc, "slide_id": "s"})
    assert epoch_1["slide_id"] == "s" and "image" not in epoch_1
    assert not torch.equal(epoch_1["views"][0], epoch_1["views"][1])
    assert not torch.equal(epoch_1["views"][0], epoch_2["views"][0])
    assert all(torch.equal(a, b) for a, b in zip(epoch_1["views"], again["views"]))


def test_multi_crop_shapes(ihc):
    views = MultiViewd.multi_crop(2, 4, global_size=96, local_size=32)({"image": ihc})["views"]
    assert [tuple(v.shape) for v in views] == [(3, 96, 96)] * 2 + [(3, 32, 32)] * 4
