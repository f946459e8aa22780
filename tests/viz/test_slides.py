"""Looking at a tile cache (medssl.viz.slides): the slide table, per-tile columns, tile sampling, the
mosaic's layout and the scale bar's exact length, against hand computations."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medssl.cache import SlideCache, read_manifests
from medssl.errors import CacheError
from medssl.preprocess import TilingParams, tile_slides
from medssl.synthetic.slides import Ellipse, SlideLayout, write_slide
from medssl.viz.slides import (
    SLIDE_COLUMNS,
    draw_scale_bar,
    format_length,
    nice_length,
    sample_tiles,
    scale_bar_pixels,
    slide_table,
    tile_mosaic,
    tile_scale,
    tile_table,
)

TILE = 32  #: tile side in pixels at 1 µm/px, from a 0.25 µm/px slide: 128 level-0 pixels, 32 µm


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """One small slide tiled at 1 µm/px beside a file that is not a slide (a failed row)."""
    folder = tmp_path_factory.mktemp("viz-slides")
    layout = SlideLayout(width=1024, height=768, tissue=[Ellipse(512, 384, 420, 330)], texture_zoom=0.25)
    write_slide(folder / "good.tiff", layout, mpp=0.25, downsamples=(1, 4))
    (folder / "broken.tiff").write_text("not a slide\n")
    (folder / "cohort.csv").write_text(
        f"slide_id,path,label\ngood,{folder / 'good.tiff'},tumor\nbroken,{folder / 'broken.tiff'},normal\n"
    )
    params = TilingParams(target_mpp=1.0, tile_size=TILE)
    tile_slides([folder / "cohort.csv"], folder / "cache", params, progress=False)
    return folder / "cache"


def test_tile_mosaic_places_each_tile_in_its_cell_with_borders_between():
    tiles = np.stack([np.full((3, 4, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    mosaic = tile_mosaic(tiles, columns=3, border=2, fill=255)
    assert mosaic.shape == (2 * 3 + 3 * 2, 3 * 4 + 4 * 2, 3)  # 2 rows, 3 columns, 3 and 4 borders
    expected = np.full(mosaic.shape, 255, np.uint8)
    for i in range(5):
        top, left = 2 + (i // 3) * 5, 2 + (i % 3) * 6
        expected[top : top + 3, left : left + 4] = 10 * (i + 1)
    np.testing.assert_array_equal(mosaic, expected)  # the sixth cell and every border stay fill


def test_tile_mosaic_defaults_to_a_square_grid_and_takes_grey_tiles():
    tiles = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2)
    mosaic = tile_mosaic(tiles, border=1, fill=0)
    assert mosaic.shape == (3 * 2 + 4, 4 * 2 + 5)  # ceil(sqrt(10)) = 4 columns, 3 rows
    np.testing.assert_array_equal(mosaic[1 + 2 * 3 : 3 + 2 * 3, 1 + 1 * 3 : 3 + 1 * 3], tiles[9])
    assert tile_mosaic(tiles[:1], border=0).shape == (2, 2)
    with pytest.raises(ValueError, match="non-empty"):
        tile_mosaic(np.zeros((0, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="columns"):
        tile_mosaic(tiles, columns=0)


@pytest.mark.parametrize(
    ("mpp", "width", "expected"),
    [(0.5, 224, 50.0), (0.25, 1000, 100.0), (2.0, 100, 100.0), (8.0, 1600, 5000.0), (0.1, 30, 1.0), (0.5, 3, 0.5)],
)
def test_nice_length_is_the_longest_1_2_5_step_within_half_the_width(mpp, width, expected):
    assert nice_length(mpp, width) == expected


def test_format_length_switches_to_millimetres():
    assert [format_length(v) for v in (0.5, 50, 1000, 2500)] == ["0.5 µm", "50 µm", "1 mm", "2.5 mm"]


@pytest.mark.parametrize(("mpp", "length", "pixels"), [(0.5, 50.0, 100), (0.2527, 20.0, 79), (1.0, 7.0, 7)])
def test_scale_bar_is_exactly_round_length_over_mpp_pixels(mpp, length, pixels):
    assert scale_bar_pixels(length, mpp) == pixels == round(length / mpp)
    image = np.full((120, 200, 3), 128, np.uint8)
    bare = draw_scale_bar(image, mpp, length, label=False, background=None, thickness=4, margin=6)
    ys, xs = np.nonzero((bare == 0).all(axis=2))
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (6, 6 + pixels, 120 - 6 - 4, 120 - 6)
    assert len(xs) == pixels * 4  # a solid rectangle, nothing else drawn
    labelled = draw_scale_bar(image, mpp, length, thickness=4, margin=6)
    bar_rows = (labelled[110:114] == 0).all(axis=2)
    np.testing.assert_array_equal(bar_rows, np.broadcast_to(np.isin(np.arange(200), range(6, 6 + pixels)), (4, 200)))
    assert (labelled[:110] == 0).all(axis=2).any()  # the label's ink sits above the bar
    np.testing.assert_array_equal(image, 128)  # the input is left alone


def test_scale_bar_defaults_to_a_nice_length_and_refuses_what_cannot_be_drawn():
    tile = np.zeros((224, 224), np.uint8)
    drawn = draw_scale_bar(tile, 0.5, label=False, colour=(255, 0, 0), background=None)
    assert drawn.shape == (224, 224, 3)
    red = (drawn == (255, 0, 0)).all(axis=2)
    assert red.any(axis=0).sum() == 100  # 50 µm at 0.5 µm/px
    with pytest.raises(ValueError, match="do not fit"):
        draw_scale_bar(tile, 0.5, 200.0)
    with pytest.raises(ValueError, match="under one pixel"):
        scale_bar_pixels(0.1, 0.5)
    with pytest.raises(ValueError, match="uint8"):
        draw_scale_bar(tile.astype(np.float32), 0.5)


def test_tile_scale_from_stored_attrs():
    attrs = {"tile_size": 224, "tile_size_level0": 448.0, "mpp": 0.25, "target_mpp": 0.5}
    assert tile_scale(attrs) == {
        "tile_px": 224,
        "um_per_px": 0.5,
        "tile_um": 112.0,
        "level0_px": 448.0,
        "level0_mpp": 0.25,
        "target_mpp": 0.5,
    }
    with pytest.raises(CacheError, match="slide-7: attrs lack the tile's resolution"):
        tile_scale({"tile_size": 224}, "slide-7")


def test_slide_table_joins_the_manifest_with_the_cache(small_cache):
    cache = SlideCache(small_cache)
    rows = {row["id"]: row for row in slide_table(small_cache)}
    assert sorted(rows) == ["broken", "good"] and all(list(row) == list(SLIDE_COLUMNS) for row in rows.values())
    good, broken = rows["good"], rows["broken"]
    assert good["status"] == "done" and good["in_cache"] and good["label"] == "tumor"
    assert good["tiles"] == cache.num_tiles("good") > 0
    assert (good["source_mpp"], good["tile_px"], good["tile_mpp"], good["tile_um"]) == (0.25, TILE, 1.0, TILE * 1.0)
    assert good["tile_mpp"] * good["tile_px"] == pytest.approx(good["tile_um"])
    assert broken["status"] == "failed" and not broken["in_cache"] and broken["tiles"] == 0
    assert "broken.tiff" in broken["reason"] and broken["tile_mpp"] is None and broken["label"] is None


def test_slide_table_lists_cached_slides_no_manifest_names(small_cache, tmp_path):
    (tmp_path / "cache.zarr").symlink_to(small_cache / "cache.zarr")  # a cache copied without its manifest
    [row] = slide_table(tmp_path)
    assert (row["id"], row["status"], row["in_cache"], row["tile_mpp"]) == ("good", "cached", True, 1.0)


def test_read_manifests_later_runs_win_and_bad_files_are_named(tmp_path):
    assert read_manifests(tmp_path) == {}
    (tmp_path / "manifest.shard-0-of-2.csv").write_text("id,path,status,reason\na,a.tiff,failed,boom\nb,b.tiff,done,\n")
    (tmp_path / "manifest.shard-1-of-2.csv").write_text("id,path,status,reason\na,a.tiff,done,\n")
    os.utime(tmp_path / "manifest.shard-0-of-2.csv", ns=(1_000_000_000, 1_000_000_000))
    rows = read_manifests(tmp_path)
    assert {k: v["status"] for k, v in rows.items()} == {"a": "done", "b": "done"}
    (tmp_path / "manifest.csv").write_text("slide,state\na,ok\n")
    with pytest.raises(CacheError, match="manifest.csv: not a medssl manifest"):
        read_manifests(tmp_path)


def test_tile_table_columns_are_the_cache_arrays(small_cache):
    cache = SlideCache(small_cache)
    table = tile_table(cache)
    n = cache.num_tiles("good")
    assert {k: len(v) for k, v in table.items()} == dict.fromkeys(table, n)
    np.testing.assert_array_equal(table["tissue"], cache.tissue("good"))
    np.testing.assert_array_equal(np.stack([table["x"], table["y"]], 1), cache.coords("good"))
    np.testing.assert_array_equal(np.stack([table["col"], table["row"]], 1), cache.grid("good"))
    assert (table["slide_id"] == "good").all() and (table["tile"] == np.arange(n)).all()
    assert table["tissue"].min() >= cache.params["tiling"]["min_tissue"]
    assert all(len(v) == 0 for v in tile_table(cache, []).values())


def test_sample_tiles_is_seeded_distinct_and_reads_the_right_pixels(small_cache):
    cache = SlideCache(small_cache)
    n = cache.num_tiles("good")
    indices, tiles = sample_tiles(cache, "good", 4, rng=3)
    again, _ = sample_tiles(cache, "good", 4, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(indices, again)
    assert len(set(indices)) == 4 and list(indices) == sorted(indices) and indices.max() < n
    np.testing.assert_array_equal(tiles, cache.tiles("good")[indices.tolist()])
    everything, _ = sample_tiles(cache, "good", n + 5)
    np.testing.assert_array_equal(everything, np.arange(n))
