"""Volume datasets, slide bags, stain sets and the DataModules, on small generated caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from medssl.cache import SlideCache, VolumeCache, store
from medssl.data.bags import BAG_KEYS, SlideBagDataset, StainSetDataset, collate_bags, collate_stain_sets
from medssl.data.datamodules import BagDataModule, TileDataModule, VolumeDataModule
from medssl.data.transforms import MultiViewd, radiology_view, seed_worker
from medssl.data.volumes import VolumePatchDataset, VolumeSliceDataset, VolumeStackDataset
from medssl.errors import InputError, MedsslError


def test_slices_cover_every_axial_slice_with_the_cached_pixels(volume_cache):
    cache = VolumeCache(volume_cache)
    ds = VolumeSliceDataset(volume_cache, labels=False)
    assert len(ds) == sum(cache.shape(v)[0] for v in cache.ids)
    sample = ds[int(ds.offsets[1]) + 2]  # third slice of the second volume
    assert sample["volume_id"] == ds.volume_ids[1] and sample["z"] == 2 and "label" not in sample
    np.testing.assert_array_equal(sample["image"][0].numpy(), cache.slice(ds.volume_ids[1], 2).astype(np.float32))
    assert sum(b - a for a, b in ds.blocks(4)) == len(ds)
    with pytest.raises(MedsslError, match="volumes without a label: anat"):
        VolumeSliceDataset(volume_cache, labels=True)
    labelled = VolumeSliceDataset(volume_cache, splits=["train"], labels=True)
    assert labelled.volume_ids == ["ball"] and labelled[5]["label"].dtype == torch.int64


def test_patches_are_random_padded_and_aligned_with_labels(volume_cache):
    ds = VolumePatchDataset(volume_cache, splits=["train"], labels=True, patch_size=(8, 12, 200), patches_per_volume=3)
    assert len(ds) == 3
    torch.manual_seed(0)
    first = ds[0]
    assert first["image"].shape == (1, 8, 12, 200) and first["label"].shape == (1, 8, 12, 200)
    z, y, x = first["start"].tolist()
    cached = np.asarray(VolumeCache(volume_cache).image("ball"))[z : z + 8, y : y + 12, :]
    width = cached.shape[2]
    np.testing.assert_array_equal(first["image"][0, :, :, :width].numpy(), cached.astype(np.float32))
    assert (first["image"][0, :, :, width:] == 0).all()  # zero padding past the volume
    starts = {tuple(ds[0]["start"].tolist()) for _ in range(10)}
    assert len(starts) > 1  # a fresh position every time


def test_stacks_are_whole_volumes_or_random_windows(volume_cache):
    cache = VolumeCache(volume_cache)
    whole = VolumeStackDataset(volume_cache, splits=["train"])[0]
    assert whole["image"].shape == (1, *cache.shape("ball"))
    window = VolumeStackDataset(volume_cache, splits=["train"], depth=4)[0]
    z0 = window["z0"]
    np.testing.assert_array_equal(
        window["image"][0].numpy(), np.asarray(cache.image("ball"))[z0 : z0 + 4].astype(np.float32)
    )


def test_bags_hold_slide_labels_only(cohort_cache, tmp_path):
    # Plant instance-level truth in the cache: the bag dataset must never return it.
    root = zarr.open_group(SlideCache(cohort_cache).path, mode="r+")
    group = root["slides/c1-he"]
    group.create_array("instance_labels", data=np.ones(group["tiles"].shape[0], dtype=np.int8))
    bags = SlideBagDataset(cohort_cache, max_instances=5)
    for k in range(len(bags)):
        bag = bags[k]
        assert set(bag) == set(BAG_KEYS)
        assert isinstance(bag["label"], int) and len(bag["instances"]) <= 5
    assert bags.classes == ["normal", "tumor"]
    torch.manual_seed(0)
    a = bags[0]["coords"]
    torch.manual_seed(1)
    assert not torch.equal(a, bags[0]["coords"])  # a fresh subset each epoch


def write_row_features(cache_path, out, dim: int = 4) -> np.ndarray:
    """Features as ``medssl embed`` lays them out, row ``i`` of slide ``k`` (cache order) all ``1000 k + i``,
    so a row read back says where it came from."""
    cache = SlideCache(cache_path)
    features = store.open_for_writing(out, "embeddings", {"encoder": "test", "items": "slides"})
    for k, slide_id in enumerate(cache.ids):
        n = cache.num_tiles(slide_id)
        with store.staged_item(features, "embeddings", slide_id) as group:
            rows = np.repeat(1000 * k + np.arange(n, dtype=np.float32)[:, None], dim, axis=1)
            group.create_array("features", data=rows)
            store.commit_item(features, "embeddings", slide_id, {"num_rows": n})
    return np.array([cache.num_tiles(s) for s in cache.ids])


def test_bags_of_features_and_padded_collation(cohort_cache, tmp_path):
    cache = SlideCache(cohort_cache)
    write_row_features(cohort_cache, tmp_path / "features")
    features = zarr.open_group(tmp_path / "features" / "cache.zarr", mode="r")
    bags = SlideBagDataset(cohort_cache, features=tmp_path / "features")
    bag = bags[0]
    np.testing.assert_array_equal(bag["instances"].numpy(), features[f"embeddings/{bags.slide_ids[0]}/features"][:])
    batch = collate_bags([bags[0], bags[1]])
    sizes = [cache.num_tiles(s) for s in bags.slide_ids[:2]]
    assert batch["instances"].shape == (2, max(sizes), 4)
    assert batch["mask"].sum(dim=1).tolist() == sizes
    short = int(np.argmin(sizes))
    assert (batch["instances"][short, sizes[short] :] == 0).all()
    store.open_for_writing(tmp_path / "empty", "embeddings", {"encoder": "test"})
    with pytest.raises(MedsslError, match="no embeddings for 3 slide"):
        SlideBagDataset(cohort_cache, features=tmp_path / "empty")
    with pytest.raises(MedsslError, match="not an embedding folder"):
        SlideBagDataset(cohort_cache, features=tmp_path / "nowhere")


@pytest.mark.parametrize("tokens", [5, 4000])
def test_stain_sets_resample_each_stain_and_mark_missing_ones(cohort_cache, tmp_path, tokens):
    counts = write_row_features(cohort_cache, tmp_path / "features")
    ids = SlideCache(cohort_cache).ids  # c1-he, c1-ihc, c2-he
    sets = StainSetDataset(cohort_cache, tmp_path / "features", tokens=tokens)
    assert sets.stains == ["HE", "IHC"] and sets.cases == ["case-1"]  # case-2 has H&E alone
    item = sets[(0, 3)]
    assert item["tokens"].shape == (2, tokens, 4) and item["present"].tolist() == [True, True]
    assert item["label"] == 1 and item["case_id"] == "case-1"  # tumor (classes: normal, tumor)
    for slot, slide_id in enumerate(["c1-he", "c1-ihc"]):
        k = ids.index(slide_id)
        rows = item["tokens"][slot, :, 0].numpy() - 1000 * k  # each token is one of this slide's own rows
        assert ((rows >= 0) & (rows < counts[k]) & (rows == rows.round())).all()
        distinct = len(np.unique(rows))
        assert distinct == (tokens if tokens <= counts[k] else counts[k])  # without replacement when enough
    assert torch.equal(sets[(0, 3)]["tokens"], item["tokens"])  # a function of (seed, epoch, case)
    assert not torch.equal(sets[(0, 4)]["tokens"], item["tokens"])
    one_stain = StainSetDataset(cohort_cache, tmp_path / "features", stains=["HE", "IHC"], min_stains=1, tokens=tokens)
    assert one_stain.cases == ["case-1", "case-2"]
    lone = one_stain[1]
    assert lone["present"].tolist() == [True, False] and (lone["tokens"][1] == 0).all()
    batch = collate_stain_sets([item, lone])
    assert batch["tokens"].shape == (2, 2, tokens, 4) and batch["present"].tolist() == [[True, True], [True, False]]
    assert batch["stains"] == ["HE", "IHC"] and batch["case_id"] == ["case-1", "case-2"]
    with pytest.raises(MedsslError, match="reference stain"):
        StainSetDataset(cohort_cache, tmp_path / "features", stains=["IHC"])


def test_tile_datamodule_splits_views_and_epochs(cohort_cache):
    dm = TileDataModule(str(cohort_cache), batch_size=4, num_workers=2, views="pair", view_size=32, seed=3)
    dm.setup("fit")
    assert dm.datasets["train"].slide_ids == ["c1-he", "c1-ihc"] and dm.datasets["val"].slide_ids == ["c2-he"]
    assert dm.datasets["test"] is None and dm.test_dataloader() == []
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    epoch_0 = next(iter(loader))
    loader.sampler.set_epoch(1)
    epoch_1 = next(iter(loader))
    assert [v.shape for v in epoch_0["views"]] == [(4, 3, 32, 32)] * 2
    assert not torch.equal(epoch_0["views"][0], epoch_1["views"][0])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].dtype == torch.uint8 and val["label"].eq(0).all()  # 'normal' is class 0


def test_radiology_views_differ_across_epochs_with_workers(volume_cache):
    ds = VolumeSliceDataset(volume_cache, transform=MultiViewd([radiology_view((32, 32))] * 2))

    def first_batch(seed):
        loader = DataLoader(
            ds, batch_size=4, num_workers=2, worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed)
        )
        return next(iter(loader))["views"][0]

    assert not torch.equal(first_batch(0), first_batch(1))
    assert torch.equal(first_batch(0), first_batch(0))


def test_volume_and_bag_datamodules_give_batches(volume_cache, cohort_cache):
    slices = VolumeDataModule(str(volume_cache), mode="slices", spatial_size=(32, 32), batch_size=4, num_workers=0)
    slices.setup("fit")
    assert [v.shape for v in next(iter(slices.train_dataloader()))["views"]] == [(4, 1, 32, 32)] * 2
    segmentation = VolumeDataModule(
        str(volume_cache),
        mode="patches",
        spatial_size=(8, 16, 16),
        views=0,
        batch_size=2,
        num_workers=0,
        val_split=None,
    )
    segmentation.setup("fit")
    batch = next(iter(segmentation.train_dataloader()))
    assert batch["image"].shape == batch["label"].shape == (2, 1, 8, 16, 16)
    bags = BagDataModule(str(cohort_cache), "tumor", batch_size=2, max_instances=4, num_workers=0)
    bags.setup("fit")
    batch = next(iter(bags.train_dataloader()))
    assert batch["instances"].shape[:2] == batch["mask"].shape and batch["mask"].shape[1] <= 4
    assert bags.classes == ["normal", "tumor"]


def test_the_positive_class_is_explicit_and_a_cohort_without_it_is_refused(cohort_cache):
    flipped = BagDataModule(str(cohort_cache), "normal", num_workers=0)
    flipped.setup("fit")
    assert flipped.classes == ["tumor", "normal"]  # what the user said, not the sorted order
    with pytest.raises(InputError, match=r"positive_class 'cancer'.*\['normal', 'tumor'\]"):
        BagDataModule(str(cohort_cache), "cancer", num_workers=0).setup("fit")


@pytest.mark.parametrize("mode, size", [("slices", (32, 32)), ("patches", (8, 16, 16))])
def test_training_views_depend_on_seed_epoch_and_sample_not_on_workers(volume_cache, mode, size):
    def epoch_batches(workers: int, epoch: int, seed: int = 0) -> list[torch.Tensor]:
        module = VolumeDataModule(
            str(volume_cache),
            mode=mode,
            spatial_size=size,
            batch_size=4,
            num_workers=workers,
            seed=seed,
            patches_per_volume=4,
        )
        module.setup("fit")
        loader = module.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [torch.cat(batch["views"]) for batch in loader]

    reference = epoch_batches(0, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(reference, epoch_batches(2, epoch=1)))
    assert not torch.equal(reference[0], epoch_batches(0, epoch=2)[0])
    assert not torch.equal(reference[0], epoch_batches(0, epoch=1, seed=5)[0])
