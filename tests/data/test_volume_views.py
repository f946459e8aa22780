"""Two-view 3D augmentation of slice stacks (the joint 2D/3D method): one shared window, disjoint
transform subsets, slice correspondence, and views drawn afresh every epoch from (seed, epoch, index)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medssl.data.datamodules import VolumeDataModule
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.seeding import seeded
from medssl.data.volume_views import VOLUME_VIEW_TRANSFORMS, VolumeViewsd
from medssl.data.volumes import VolumePatchDataset, VolumeSliceDataset, VolumeStackDataset
from medssl.errors import MedsslError

SIZE = (6, 12, 10)


def draw(transform: VolumeViewsd, image: torch.Tensor, seed: int) -> dict:
    """One sample's views with every draw fixed by ``seed`` (as a dataset does for (seed, epoch, index))."""
    with seeded(transform, seed, 0, 0):
        return transform({"image": image, "volume_id": "v"})


def window_offset(window: torch.Tensor, source: torch.Tensor) -> tuple[int, ...]:
    """Where ``window [1, D, H, W]`` lies in ``source [1, Z, Y, X]`` (asserting it is an exact sub-block)."""
    d, h, w = window.shape[1:]
    ranges = [range(n - m + 1) for n, m in zip(source.shape[1:], (d, h, w))]
    hits = [
        o
        for o in itertools.product(*ranges)
        if torch.equal(source[:, o[0] : o[0] + d, o[1] : o[1] + h, o[2] : o[2] + w], window)
    ]
    assert len(hits) == 1, "the window is not one sub-block of the source"
    return hits[0]


def slice_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson correlation of ``a[0, k]`` with ``b[0, k]`` for every slice ``k``."""
    x, y = a[0].flatten(1).double(), b[0].flatten(1).double()
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).numpy()


def test_views_have_the_window_shape_differ_and_use_disjoint_subsets_of_the_pool():
    image = torch.randn(1, 9, 15, 14, generator=torch.Generator().manual_seed(0))
    transform = VolumeViewsd(SIZE, transforms_per_view=2)
    used = set()
    for seed in range(12):
        out = draw(transform, image, seed)
        assert [v.shape for v in out["views"]] == [(1, *SIZE)] * 2 and out["image"].shape == (1, *SIZE)
        assert all(v.dtype == torch.float32 and type(v) is torch.Tensor for v in out["views"])
        first, second = (set(names.split("+")) for names in out["view_transforms"])
        assert len(first) == len(second) == 2 and not first & second and first | second <= set(VOLUME_VIEW_TRANSFORMS)
        assert not torch.equal(out["views"][0], out["views"][1])
        assert out["volume_id"] == "v"
        used |= first | second
    assert used == set(VOLUME_VIEW_TRANSFORMS)  # every transform of the pool gets drawn
    single = draw(VolumeViewsd(SIZE, transforms_per_view=1), image, 0)["view_transforms"]  # the reference's recipe
    assert len(single) == 2 and all("+" not in names for names in single) and single[0] != single[1]


def test_flips_are_in_plane_and_each_view_applies_what_it_records():
    image = torch.randn(1, *SIZE, generator=torch.Generator().manual_seed(1))
    transform = VolumeViewsd(SIZE, transforms_per_view=1, transforms=["flip", "gamma"])
    flips_seen = set()
    for seed in range(10):
        out = draw(transform, image, seed)
        assert torch.equal(out["image"], image)  # the window of a stack of exactly spatial_size is the stack
        flipped = out["views"][out["view_transforms"].index("flip")]
        axes = [dims for dims in ((2,), (3,), (2, 3)) if torch.equal(flipped, image.flip(dims))]
        assert len(axes) == 1, "a flip view is the window flipped along Y, X or both; never along the slices"
        flips_seen.add(axes[0])
    assert len(flips_seen) > 1


def test_in_plane_geometry_keeps_every_slice_at_its_index():
    # Slice z of the stack is the constant z + 1 on a central disc, so a transform that moved content
    # between slices would change a slice's maximum. Flip and affine views keep it; the window is random.
    z, y, x = torch.meshgrid(torch.arange(10), torch.arange(16), torch.arange(16), indexing="ij")
    disc = ((y - 7.5) ** 2 + (x - 7.5) ** 2 < 25).float()
    image = ((z + 1).float() * disc)[None]
    transform = VolumeViewsd((6, 16, 16), transforms_per_view=1, transforms=["flip", "affine"])
    for seed in range(4):
        out = draw(transform, image, seed)
        z0 = window_offset(out["image"], image)[0]
        expected = torch.arange(z0 + 1, z0 + 7).float()
        for view in out["views"]:
            torch.testing.assert_close(view[0].amax(dim=(1, 2)), expected, atol=1e-4, rtol=0)


def test_with_intensity_transforms_only_both_views_show_the_same_slices():
    source = torch.randn(1, 10, 18, 16, generator=torch.Generator().manual_seed(2))  # independent voxels
    transform = VolumeViewsd(SIZE, transforms_per_view=1, transforms=["noise", "bias_field", "gamma"])
    for seed in range(4):
        out = draw(transform, source, seed)
        window_offset(out["image"], source)  # one random window of the source, shared by both views
        first, second = out["views"]
        assert slice_correlation(first, second).min() > 0.8  # slice k against slice k: the same voxels
        shifted = slice_correlation(first[:, 1:], second[:, :-1])  # slice k + 1 against slice k: unrelated
        assert np.abs(shifted).max() < 0.35
        assert slice_correlation(first, out["image"]).min() > 0.9


def test_a_small_stack_is_zero_padded_to_the_window():
    image = torch.ones(1, 3, 20, 5)
    out = draw(VolumeViewsd(SIZE, transforms=["noise", "gamma"], transforms_per_view=1), image, 0)
    assert out["image"].shape == (1, *SIZE) and out["image"].sum() == 3 * 12 * 5  # padded Z and X, cropped Y


def test_bad_pools_are_refused_with_the_reason():
    with pytest.raises(MedsslError, match="unknown view transform 'rotate'"):
        VolumeViewsd(SIZE, transforms=["flip", "rotate"])
    with pytest.raises(MedsslError, match="2 views × 2 transforms per view .* the pool has 3"):
        VolumeViewsd(SIZE, transforms=["flip", "noise", "gamma"])
    with pytest.raises(MedsslError, match="3 positive sizes"):
        VolumeViewsd((64, 64))
    with pytest.raises(ValueError, match="3-entry spatial_size"):
        VolumeDataModule("unused", mode="stacks", spatial_size=(32, 32))
    with pytest.raises(MedsslError, match="unknown view transform"):
        VolumeDataModule("unused", mode="stacks", spatial_size=SIZE, view_transforms=["warp"])


def test_views_are_fresh_every_epoch_and_reproduce_from_seed_epoch_and_index(volume_cache):
    def stacks(seed: int) -> VolumeStackDataset:
        return VolumeStackDataset(volume_cache, transform=VolumeViewsd(SIZE), depth=8, seed=seed)

    dataset, again, other = stacks(0), stacks(0), stacks(1)
    epoch_0, epoch_1 = dataset[(1, 0)], dataset[(1, 1)]
    assert not torch.equal(epoch_0["views"][0], epoch_1["views"][0])
    for repeat in (again[(1, 1)], dataset[(1, 1)]):
        assert all(torch.equal(a, b) for a, b in zip(repeat["views"], epoch_1["views"], strict=True))
        assert repeat["view_transforms"] == epoch_1["view_transforms"] and repeat["z0"] == epoch_1["z0"]
    assert not torch.equal(other[(1, 1)]["views"][0], epoch_1["views"][0])


def test_the_datamodule_draws_new_views_each_epoch_whatever_the_workers(volume_cache):
    def epoch_batch(workers: int, epoch: int) -> dict:
        module = VolumeDataModule(
            str(volume_cache), mode="stacks", spatial_size=SIZE, stack_depth=8, batch_size=1, num_workers=workers
        )
        module.setup("fit")
        loader = module.train_dataloader()
        assert isinstance(loader.sampler, BlockShuffleSampler)
        loader.sampler.set_epoch(epoch)
        (batch,) = list(loader)  # one training volume
        return batch

    epoch_0, epoch_1 = epoch_batch(0, 0), epoch_batch(0, 1)
    assert [v.shape for v in epoch_0["views"]] == [(1, 1, *SIZE)] * 2 and epoch_0["index"].tolist() == [0]
    assert not torch.equal(epoch_0["views"][0], epoch_1["views"][0])
    with_worker = epoch_batch(1, 1)
    assert all(torch.equal(a, b) for a, b in zip(with_worker["views"], epoch_1["views"], strict=True))


def test_evaluation_stacks_are_padded_or_centre_cropped_to_batch(volume_cache):
    module = VolumeDataModule(str(volume_cache), mode="stacks", spatial_size=(40, 16, 48), batch_size=1, num_workers=0)
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert batch["image"].shape == (1, 1, 40, 16, 48) and "views" not in batch and batch["index"].tolist() == [0]


@pytest.mark.parametrize(
    "make",
    [
        lambda cache: VolumeSliceDataset(cache),
        lambda cache: VolumePatchDataset(cache, patch_size=(4, 4, 4), patches_per_volume=2),
        lambda cache: VolumeStackDataset(cache, depth=2),
    ],
    ids=["slices", "patches", "stacks"],
)
def test_every_volume_sample_carries_its_dataset_index(volume_cache, make):
    dataset = make(volume_cache)
    last = len(dataset) - 1
    assert [dataset[k]["index"] for k in (0, last)] == [0, last]
    assert dataset[(last, 3)]["index"] == last and isinstance(dataset[(last, 3)]["index"], int)
