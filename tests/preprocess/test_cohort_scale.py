"""Big cohorts: the per-item paths read and write ``zarr.json`` directly (medssl.cache.nodes) and must
agree with zarr-python's own view of the store; a resumed run and a dataset index open no tiles array."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import zarr

from medssl.cache import SlideCache, nodes
from medssl.cache import store as cache_mod
from medssl.data.datasets import TileDataset
from medssl.preprocess import TilingParams, tile_slides
from medssl.viz.qc import tile_overlay


def zarr_listing(group: zarr.Group) -> dict[str, dict]:
    with warnings.catch_warnings():  # zarr warns about the stray folder and file, then skips them
        warnings.simplefilter("ignore")
        return {name: dict(child.attrs) for name, child in sorted(group.groups())}


def test_fast_listing_equals_zarrs_own_listing(tmp_path):
    root = cache_mod.open_for_writing(tmp_path / "c", "slides", {"v": 1})
    with cache_mod.staged_item(root, "slides", "done") as group:
        group.create_array("x", data=np.arange(3))
        group.attrs["written_before_commit"] = True
    cache_mod.commit_item(root, "slides", "done", {"num_tiles": 3, "label": "a"})
    cache_mod.begin_item(root, "slides", "leftover")  # a staging leftover of a killed run
    slides = root["slides"]
    assert isinstance(slides, zarr.Group)
    slides.create_group("incomplete").attrs["slide_id"] = "incomplete"  # a group without status
    slides.create_array("an-array", data=np.zeros(2))
    (cache_mod.store_path(tmp_path / "c") / "slides" / "no-metadata").mkdir()
    (cache_mod.store_path(tmp_path / "c") / "slides" / "stray.txt").write_text("x")

    fast = cache_mod.item_attrs(tmp_path / "c", "slides")
    assert fast == zarr_listing(slides)
    assert list(fast) == ["done", "incomplete"]
    assert fast["done"] == {"written_before_commit": True, "num_tiles": 3, "label": "a", "status": "complete"}
    assert cache_mod.complete_attrs(root, "slides", "done") == fast["done"]
    assert cache_mod.complete_attrs(root, "slides", "incomplete") is None  # listed, but not complete
    assert cache_mod.complete_attrs(root, "slides", "leftover") is None
    assert cache_mod.complete_attrs(root, "slides", "an-array") is None


@pytest.mark.parametrize(
    "data",
    [
        np.arange(14, dtype=np.int64).reshape(7, 2) * 1000,
        np.arange(6, dtype=">i4").reshape(3, 2),  # big-endian input is stored little-endian, as zarr does
        np.linspace(0, 1, 5, dtype=np.float32),
        np.eye(4, dtype=bool),
        np.arange(60, dtype=np.uint8).reshape(4, 5, 3),
        np.zeros((0, 2), dtype=np.int64),
    ],
    ids=["int64", "big-endian", "float32", "bool", "rgb", "empty"],
)
def test_arrays_written_directly_are_the_arrays_zarr_writes(tmp_path, data):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=3)
    group.create_array("by_zarr", data=data, chunks=tuple(max(1, n) for n in data.shape))
    nodes.write_array(tmp_path / "g.zarr" / "direct", data)
    by_zarr, direct = (json.loads((tmp_path / "g.zarr" / n / "zarr.json").read_text()) for n in ("by_zarr", "direct"))
    assert direct == by_zarr
    back = np.asarray(zarr.open_array(tmp_path / "g.zarr" / "direct", mode="r")[...])
    assert back.dtype == data.dtype.newbyteorder("=") and np.array_equal(back, data)


def spy_on_zarr_opens(monkeypatch) -> list[str]:
    """Record every node zarr-python opens by path or by key."""
    opened: list[str] = []
    for name in ("open_group", "open_array", "open"):
        real = getattr(zarr, name)
        monkeypatch.setattr(zarr, name, lambda *a, _real=real, _name=name, **k: opened.append(_name) or _real(*a, **k))
    real_getitem = zarr.Group.__getitem__
    monkeypatch.setattr(zarr.Group, "__getitem__", lambda self, key: opened.append(key) or real_getitem(self, key))
    return opened


def test_a_rerun_that_skips_everything_opens_the_store_once_and_no_item(split_cache, tmp_path, monkeypatch):
    cache = shutil.copytree(split_cache, tmp_path / "cache")
    tiles = sum(SlideCache(split_cache).metadata(s)["num_tiles"] for s in "abc")
    opened = spy_on_zarr_opens(monkeypatch)
    summary = tile_slides(
        [split_cache.parent / "cohort.csv"], cache, TilingParams(target_mpp=1.0, tile_size=64), progress=False
    )
    assert summary.counts() == {"done": 0, "skipped": 3, "failed": 0} and summary.tiles == tiles
    # The store, to check its parameters, and once more for the worker's writes; no item, no tiles array.
    assert opened == ["open_group", "open_group"]


def test_dataset_index_comes_from_attrs_and_agrees_with_the_arrays(split_cache, monkeypatch):
    cache = SlideCache(split_cache)
    opened = spy_on_zarr_opens(monkeypatch)
    data = TileDataset(cache)
    assert opened == []  # lengths from num_tiles: no tiles array was opened
    monkeypatch.undo()
    lengths = [cache.tiles(s).shape[0] for s in data.slide_ids]
    assert data.slide_ids == cache.ids and np.array_equal(np.diff(data.offsets), lengths)
    assert data.chunk_tiles == [cache.tiles(s).chunks[0] for s in data.slide_ids]
    assert sum(b - a for a, b in data.blocks()) == len(data) == sum(lengths)
    val = TileDataset(cache, splits=["val"])
    assert val.slide_ids == ["b", "c"] and len(val) == sum(lengths[1:])


def test_qc_picture_of_a_tiny_thumbnail_is_enlarged_at_most_max_zoom():
    mask = np.zeros((32, 24), dtype=bool)
    mask[8:24, 4:20] = True
    rgb = np.full((32, 24, 3), 230, dtype=np.uint8)
    picture = tile_overlay(rgb, mask, np.array([[4.0, 8.0, 18.0, 22.0]]), max_zoom=8)
    assert picture.size == (24 * 8, 32 * 8)
    big = tile_overlay(rgb, mask, np.zeros((0, 4)), longest_side=64, max_zoom=8)
    assert big.size == (48, 64)  # longest_side still caps large pictures


def test_a_slide_with_few_tiles_gets_one_chunk_of_exactly_its_tiles():
    from medssl.preprocess.tile import StorageParams

    assert StorageParams().array_kwargs(224, 4)["chunks"] == (4, 224, 224, 3)  # not a padded 32-tile chunk
    assert StorageParams().array_kwargs(224, 100)["chunks"] == (32, 224, 224, 3)
    assert StorageParams(codec="jpeg").array_kwargs(224, 3)["shards"] == (3, 224, 224, 3)
