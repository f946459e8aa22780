"""Tile reading, the tile dataset and the block-shuffle sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medssl.cache import SlideCache, TileReader
from medssl.data.datasets import TileDataset
from medssl.data.samplers import BlockShuffleSampler
from medssl.preprocess import StorageParams, TilingParams, tile_slides


@pytest.fixture(scope="module")
def tile_cache(slides_dir, tmp_path_factory):
    """Two slides with labels, splits and stains, 64-px tiles in chunks of 8 (many small blocks)."""
    folder = tmp_path_factory.mktemp("tile-cache")
    manifest = folder / "cohort.csv"
    manifest.write_text(
        "slide_id,path,label,split,stain\n"
        f"a,{slides_dir / 'generic-025.tiff'},tumor,train,HE\n"
        f"b,{slides_dir / 'aperio-050.svs'},normal,val,IHC\n"
    )
    summary = tile_slides(
        [manifest],
        folder / "cache",
        TilingParams(target_mpp=1.0, tile_size=64),
        StorageParams(chunk_tiles=8),
        progress=False,
    )
    assert not summary.failed
    return folder / "cache"


def test_fast_reader_equals_zarr_and_is_used(tile_cache, rng):
    cache = SlideCache(tile_cache)
    reader = TileReader(cache.path / "slides" / "a" / "tiles")
    assert reader.fast and reader.chunk_tiles == 8
    indices = rng.integers(0, len(reader), 50)
    np.testing.assert_array_equal(reader.read(indices), cache.tiles("a")[:][indices])
    with pytest.raises(IndexError):
        reader.read([len(reader)])


def test_reader_falls_back_to_zarr_for_compressed_tiles(slides_dir, tmp_path, rng):
    tile_slides(
        [slides_dir / "aperio-050.svs"],
        tmp_path / "c",
        TilingParams(target_mpp=1.0, tile_size=64),
        StorageParams(codec="jpeg"),
        progress=False,
    )
    cache = SlideCache(tmp_path / "c")
    reader = TileReader(cache.path / "slides" / "aperio-050" / "tiles")
    assert not reader.fast
    indices = rng.integers(0, len(reader), 10)
    np.testing.assert_array_equal(reader.read(indices), cache.tiles("aperio-050")[:][indices])


def test_dataset_samples_filters_and_labels(tile_cache):
    everything = TileDataset(tile_cache)
    cache = SlideCache(tile_cache)
    assert len(everything) == cache.num_tiles("a") + cache.num_tiles("b")
    assert everything.classes == ["normal", "tumor"]
    sample = everything[cache.num_tiles("a") + 3]  # the 4th tile of slide b
    assert sample["slide_id"] == "b" and sample["tile"] == 3 and sample["label"] == 0
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    np.testing.assert_array_equal(sample["image"].numpy().transpose(1, 2, 0), cache.tiles("b")[3])
    np.testing.assert_array_equal(sample["coords"].numpy(), cache.coords("b")[3])
    train = TileDataset(tile_cache, splits=["train"], classes=everything.classes)
    assert train.slide_ids == ["a"] and len(train) == cache.num_tiles("a") and train[0]["label"] == 1
    assert TileDataset(tile_cache, stains=["IHC"]).slide_ids == ["b"]
    assert TileDataset(tile_cache, labels=["none"]).slide_ids == []


def test_batched_fetch_keeps_order_and_applies_the_transform(tile_cache, rng):
    flips = TileDataset(tile_cache, transform=lambda s: {**s, "image": s["image"].flip(-1)})
    plain = TileDataset(tile_cache)
    indices = rng.permutation(len(plain))[:40].tolist()
    for got, index in zip(flips.__getitems__(indices), indices):
        expected = plain[index]
        assert (got["slide_id"], got["tile"]) == (expected["slide_id"], expected["tile"])
        assert torch.equal(got["image"], expected["image"].flip(-1))


def test_blocks_follow_storage_chunks(tile_cache):
    ds = TileDataset(tile_cache)
    blocks = ds.blocks()
    assert blocks[0] == (0, 8)
    assert sum(b - a for a, b in blocks) == len(ds)
    for a, b in blocks:  # a block never straddles two slides or two chunks
        slides, tiles = ds.locate(np.arange(a, b))
        assert len(set(slides)) == 1 and len(set(tiles // 8)) == 1


def blocks_of(sizes):
    out, start = [], 0
    for size in sizes:
        out.append((start, start + size))
        start += size
    return out


BLOCKS = blocks_of([8] * 12 + [5, 3, 8, 1])  # 113 samples in uneven blocks


def test_ranks_are_disjoint_and_cover_everything_once():
    parts = [list(BlockShuffleSampler(BLOCKS, seed=3, rank=r, world_size=2, pad=False)) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(113))
    assert [len(p) for p in parts] == [
        len(BlockShuffleSampler(BLOCKS, rank=r, world_size=2, pad=False)) for r in range(2)
    ]


def test_padding_gives_equal_ranks_with_fewest_repeats():
    parts = [list(BlockShuffleSampler(BLOCKS, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == 38
    counts = Counter(parts[0] + parts[1] + parts[2])
    assert set(counts) == set(range(113)) and sum(c - 1 for c in counts.values()) == 3 * 38 - 113


def test_order_is_reproducible_and_changes_every_epoch():
    a, b = BlockShuffleSampler(BLOCKS, seed=7), BlockShuffleSampler(BLOCKS, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BlockShuffleSampler(BLOCKS, seed=8)) != first


def test_block_shuffle_keeps_reads_local():
    """Any 32 consecutive samples come from a few blocks (a window of 4), not from all 16."""
    sampler = BlockShuffleSampler(BLOCKS, seed=0, window_blocks=4)
    order = np.array(list(sampler))
    block_of = np.zeros(113, dtype=int)
    for k, (a, b) in enumerate(BLOCKS):
        block_of[a:b] = k
    touched = [len(set(block_of[order[i : i + 32]])) for i in range(0, len(order) - 32, 32)]
    assert max(touched) <= 10 and np.mean(touched) < 8
    unshuffled = BlockShuffleSampler(BLOCKS, shuffle=False)
    assert list(unshuffled) == list(range(113))


def test_two_workers_and_two_ranks_see_every_tile_once(tile_cache):
    ds = TileDataset(tile_cache)
    seen = []
    for rank in range(2):
        sampler = BlockShuffleSampler(ds.blocks(), seed=1, rank=rank, world_size=2, pad=False)
        loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=2)
        rank_seen = [(s, int(t)) for batch in loader for s, t in zip(batch["slide_id"], batch["tile"])]
        expected = [(ds.slide_ids[s], int(t)) for s, t in zip(*ds.locate(np.array(list(sampler))))]
        assert rank_seen == expected  # the loader delivers the sampler's order exactly
        seen.extend(rank_seen)
    assert len(seen) == len(set(seen)) == len(ds)


def test_batch_loader_reads_whole_batches_in_sampler_order(tile_cache):
    from medssl.data.datasets import batch_loader

    ds = TileDataset(tile_cache)
    sampler = BlockShuffleSampler(ds.blocks(), seed=5)
    order = list(sampler)
    batches = list(batch_loader(ds, sampler, batch_size=16, num_workers=2))
    assert sum(len(b["image"]) for b in batches) == len(ds)
    got = np.concatenate([ds.offsets[b["slide"].numpy()] + b["tile"].numpy() for b in batches])
    np.testing.assert_array_equal(got, order)
    first = batches[0]
    assert first["image"].shape == (16, 3, 64, 64)
    assert first["image"].is_contiguous(memory_format=torch.channels_last)
    for row in (0, 7, 15):
        assert torch.equal(first["image"][row], ds[order[row]]["image"])
        assert int(first["label"][row]) == ds[order[row]]["label"]


def test_threaded_loader_delivers_sampler_order_and_exposes_the_sampler(tile_cache):
    from medssl.data.datasets import ThreadedBatchLoader

    ds = TileDataset(tile_cache)
    sampler = BlockShuffleSampler(ds.blocks(), seed=9)
    loader = ThreadedBatchLoader(ds, sampler, batch_size=16, threads=2, prefetch=2)
    assert loader.sampler is sampler and len(loader) == -(-len(ds) // 16)
    got = np.concatenate([ds.offsets[b["slide"].numpy()] + b["tile"].numpy() for b in loader])
    np.testing.assert_array_equal(got, list(sampler))
    sampler.set_epoch(1)
    again = np.concatenate([ds.offsets[b["slide"].numpy()] + b["tile"].numpy() for b in loader])
    assert not np.array_equal(got, again) and sorted(got) == sorted(again)
