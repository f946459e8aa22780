"""`medssl tile` end to end: physical scale, tissue filtering, resume, refusal, bad inputs, sharding, reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medssl.cache import SlideCache
from medssl.cache import store as cache_mod
from medssl.cli import main as cli
from medssl.errors import CacheError
from medssl.jobs import Job, select_shard
from medssl.preprocess import StorageParams, TilingParams, tile_slides
from medssl.synthetic.slides import write_demo_cohort
from tests.layouts import LAYOUT
from tests.manifests import manifest_rows


def tile(inputs, out, **kwargs):
    kwargs.setdefault("progress", False)
    return tile_slides([str(p) for p in inputs], out, **kwargs)


@pytest.mark.parametrize("target_mpp", [0.5, 1.0])
def test_tiles_have_the_target_physical_size_on_two_source_mpps(slides_dir, tmp_path, target_mpp):
    params = TilingParams(target_mpp=target_mpp, tile_size=64, min_tissue=0.9)
    summary = tile([slides_dir], tmp_path / "c", params=params)
    assert not summary.failed
    cache = SlideCache(tmp_path / "c")
    assert cache.ids == ["aperio-050", "generic-025"]
    for slide_id, source_mpp in [("generic-025", 0.25), ("aperio-050", 0.5)]:
        meta = cache.metadata(slide_id)
        assert meta["mpp"] == pytest.approx(source_mpp)
        assert meta["target_mpp"] == target_mpp
        assert meta["scale"] == pytest.approx(target_mpp / meta["read_level_mpp"])
        # A tile spans tile_size * target_mpp microns: that many level-0 pixels at the source MPP.
        side_l0 = 64 * target_mpp / source_mpp
        assert meta["tile_size_level0"] == pytest.approx(side_l0)
        grid, coords = cache.grid(slide_id), cache.coords(slide_id)
        np.testing.assert_allclose(coords, np.round(grid * side_l0), atol=0.5)


@pytest.mark.parametrize("target_mpp", [0.5, 1.0])
def test_tile_pixels_match_the_layout_rendered_at_the_target_scale(slides_dir, tmp_path, target_mpp):
    """Content check of scale: the cached tile matches ground truth at the right scale, not at 2× off."""
    params = TilingParams(target_mpp=target_mpp, tile_size=64, min_tissue=1.0)
    tile([slides_dir / "generic-025.tiff"], tmp_path / "c", params=params)
    cache = SlideCache(tmp_path / "c")
    tiles, coords = cache.tiles("generic-025")[:16], cache.coords("generic-025")[:16]
    ds = target_mpp / 0.25
    errors = {"right": [], "half": [], "double": []}
    for pixels, (x, y) in zip(tiles.astype(float), coords):
        for name, factor in [("right", 1.0), ("half", 0.5), ("double", 2.0)]:
            truth = LAYOUT.render(int(x), int(y), 64, 64, downsample=ds * factor).astype(float)
            errors[name].append(np.abs(pixels - truth).mean())
    right = np.mean(errors["right"])
    assert right < 0.6 * np.mean(errors["half"]) and right < 0.6 * np.mean(errors["double"])


def test_kept_tiles_follow_the_known_tissue_layout(slides_dir, tmp_path):
    params = TilingParams(target_mpp=0.5, tile_size=64, min_tissue=0.5)
    tile([slides_dir / "generic-025.tiff"], tmp_path / "c", params=params)
    cache = SlideCache(tmp_path / "c")
    side = 128  # level-0 pixels per tile
    cols, rows = cache.metadata("generic-025")["grid_shape"]
    offsets = (np.arange(8) + 0.5) * side / 8
    ox, oy = np.meshgrid(offsets, offsets)

    def truth_fraction(gx: int, gy: int) -> float:
        return LAYOUT.tissue_at(gx * side + ox, gy * side + oy).mean()

    kept = {tuple(g) for g in cache.grid("generic-025")}
    fractions = {(gx, gy): truth_fraction(gx, gy) for gx in range(cols) for gy in range(rows)}
    inside = [g for g, f in fractions.items() if f == 1.0]
    outside = [g for g, f in fractions.items() if f == 0.0]
    assert inside and outside
    assert sum(g in kept for g in inside) / len(inside) > 0.97
    assert not any(g in kept for g in outside)
    assert all(fractions[g] > 0.2 for g in kept)
    stored = dict(zip(map(tuple, cache.grid("generic-025")), cache.tissue("generic-025")))
    # A tile is only 4 mask pixels wide here, so a one-pixel mask edge shifts its fraction by 0.25.
    diffs = np.array([abs(stored[g] - fractions[g]) for g in kept])
    assert diffs.mean() < 0.05 and diffs.max() < 0.5


def test_overlap_makes_a_denser_grid(slides_dir, tmp_path):
    base = TilingParams(target_mpp=1.0, tile_size=64, min_tissue=0.5)
    dense = TilingParams(target_mpp=1.0, tile_size=64, stride=32, min_tissue=0.5)
    tile([slides_dir / "generic-025.tiff"], tmp_path / "a", params=base)
    tile([slides_dir / "generic-025.tiff"], tmp_path / "b", params=dense)
    a, b = SlideCache(tmp_path / "a"), SlideCache(tmp_path / "b")
    assert b.num_tiles("generic-025") > 3 * a.num_tiles("generic-025")
    steps = np.diff(np.unique(b.coords("generic-025")[:, 0]))
    assert 128 in steps and np.all(steps % 128 == 0)  # 32 target px at 1.0 µm/px = 128 level-0 px at 0.25


def test_qc_picture_and_cache_contents(slides_dir, tmp_path):
    tile([slides_dir], tmp_path / "c", params=TilingParams(target_mpp=1.0, tile_size=64))
    cache = SlideCache(tmp_path / "c")
    for slide_id in cache.ids:
        png = tmp_path / "c" / "qc" / f"{slide_id}.png"
        assert png.stat().st_size > 1000
        meta = cache.metadata(slide_id)
        n = meta["num_tiles"]
        assert cache.tiles(slide_id).shape == (n, 64, 64, 3)
        assert cache.tiles(slide_id).dtype == np.uint8
        assert cache.coords(slide_id).shape == (n, 2) and cache.tissue(slide_id).shape == (n,)
        assert cache.thumbnail(slide_id).shape[:2] == cache.tissue_mask(slide_id).shape
        assert meta["source"]["size"] == os.path.getsize(slides_dir / Path(meta["source"]["path"]).name)
    assert cache.params["tiling"]["tile_size"] == 64
    assert [row["slide_id"] for row in cache.manifest()] == cache.ids


def test_jpeg_codec_round_trips_close_to_lossless(slides_dir, tmp_path):
    params = TilingParams(target_mpp=1.0, tile_size=64)
    tile([slides_dir / "generic-025.tiff"], tmp_path / "raw", params=params)
    tile(
        [slides_dir / "generic-025.tiff"],
        tmp_path / "jpg",
        params=params,
        storage=StorageParams(codec="jpeg", jpeg_quality=95),
    )
    raw = SlideCache(tmp_path / "raw").tiles("generic-025")[:]
    jpg = SlideCache(tmp_path / "jpg").tiles("generic-025")[:]
    assert raw.shape == jpg.shape
    assert 0 < np.abs(raw.astype(int) - jpg.astype(int)).mean() < 3.0


def test_bad_inputs_are_reported_and_the_rest_finishes(bad_dir, tmp_path):
    missing = bad_dir / "missing.svs"
    out = tmp_path / "c"
    code = cli(["tile", str(bad_dir), str(missing), "--out", str(out), "--mpp", "1.0", "--tile-size", "64", "--quiet"])
    assert code == 1
    rows = manifest_rows(out / "manifest.csv")
    assert rows["good"]["status"] == "done" and int(rows["good"]["tiles"]) > 0
    expected = {
        "notes": "not a slide format",
        "truncated": "unreadable or truncated",
        "cut-short": "unreadable or truncated",
        "blank": "no tissue found",
        "no-mpp": "no MPP",
        "missing": "file not found",
    }
    for slide_id, reason in expected.items():
        assert rows[slide_id]["status"] == "failed", slide_id
        path, _, why = rows[slide_id]["reason"].partition(": ")
        assert Path(path).stem == slide_id and reason in why, rows[slide_id]["reason"]
    assert SlideCache(out).ids == ["good"]
    assert not any(p.is_dir() for p in (out / "cache.zarr" / "staging" / "slides").iterdir())


def test_assume_mpp_and_csv_mpp_rescue_a_slide_without_metadata(bad_dir, tmp_path):
    assert (
        cli(
            [
                "tile",
                str(bad_dir / "no-mpp.tiff"),
                "--out",
                str(tmp_path / "a"),
                "--mpp",
                "1",
                "--tile-size",
                "64",
                "--assume-mpp",
                "0.25",
                "--quiet",
            ]
        )
        == 0
    )
    assert SlideCache(tmp_path / "a").metadata("no-mpp")["mpp_source"] == "assumed"
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"slide_id,path,mpp,label\ncase-7,{bad_dir / 'no-mpp.tiff'},0.25,tumor\n")
    assert cli(["tile", str(manifest), "--out", str(tmp_path / "b"), "--mpp", "1", "--tile-size", "64", "--quiet"]) == 0
    meta = SlideCache(tmp_path / "b").metadata("case-7")
    assert (meta["mpp_source"], meta["label"]) == ("given", "tumor")


def test_changed_parameters_are_refused_unless_overwrite(slides_dir, tmp_path):
    src = [slides_dir / "aperio-050.svs"]
    tile(src, tmp_path / "c", params=TilingParams(target_mpp=1.0, tile_size=64))
    with pytest.raises(CacheError, match=r"tile_size: 64 -> 32"):
        tile(src, tmp_path / "c", params=TilingParams(target_mpp=1.0, tile_size=32))
    assert cli(["tile", str(src[0]), "--out", str(tmp_path / "c"), "--mpp", "1", "--tile-size", "32", "--quiet"]) == 2
    assert SlideCache(tmp_path / "c").tiles("aperio-050").shape[1] == 64  # nothing lost
    tile(src, tmp_path / "c", params=TilingParams(target_mpp=1.0, tile_size=32), overwrite=True)
    assert SlideCache(tmp_path / "c").tiles("aperio-050").shape[1] == 32


def test_rerun_skips_complete_slides_and_redoes_changed_sources(slides_dir, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("generic-025.tiff", "aperio-050.svs"):
        (folder / name).write_bytes((slides_dir / name).read_bytes())
    params = TilingParams(target_mpp=1.0, tile_size=64)
    first = tile([folder], tmp_path / "c", params=params)
    assert [r.status for r in first.results] == ["done", "done"]
    second = tile([folder], tmp_path / "c", params=params)
    assert [r.status for r in second.results] == ["skipped", "skipped"]
    assert second.tiles == first.tiles
    os.utime(folder / "aperio-050.svs", ns=(time.time_ns(), time.time_ns()))  # "a new version of the file"
    third = {r.item_id: r.status for r in tile([folder], tmp_path / "c", params=params).results}
    assert third == {"aperio-050": "done", "generic-025": "skipped"}


def test_interrupted_slide_is_redone_without_duplicates(slides_dir, tmp_path, monkeypatch):
    params = TilingParams(target_mpp=1.0, tile_size=64)
    calls = []
    real_commit = cache_mod.commit_item

    def crash_on_second(root, kind, item_id, attrs):
        calls.append(item_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the run were killed just before this slide's commit
        real_commit(root, kind, item_id, attrs)

    monkeypatch.setattr(cache_mod, "commit_item", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        tile([slides_dir], tmp_path / "c", params=params)
    monkeypatch.setattr(cache_mod, "commit_item", real_commit)
    assert SlideCache(tmp_path / "c").ids == ["aperio-050"]
    statuses = {r.item_id: r.status for r in tile([slides_dir], tmp_path / "c", params=params).results}
    assert statuses == {"aperio-050": "skipped", "generic-025": "done"}
    cache = SlideCache(tmp_path / "c")
    grid = cache.grid("generic-025")
    assert len({tuple(g) for g in grid}) == len(grid) == cache.num_tiles("generic-025")


def test_killed_process_loses_nothing_completed(tmp_path):
    """SIGKILL a real `medssl tile` run after its first slide commits; the re-run finishes the rest."""
    slides = write_demo_cohort(tmp_path / "slides", n_slides=3, size=3072)
    out = tmp_path / "c"
    command = [
        sys.executable,
        "-m",
        "medssl.cli",
        "tile",
        str(tmp_path / "slides"),
        "--out",
        str(out),
        "--mpp",
        "0.5",
        "--tile-size",
        "64",
        "--quiet",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slides_group = out / "cache.zarr" / "slides"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if slides_group.exists() and any(p.is_dir() for p in slides_group.iterdir()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivors = SlideCache(out).ids
    assert 1 <= len(survivors) <= 3
    for slide_id in survivors:  # whatever was committed is whole
        cache = SlideCache(out)
        assert cache.tiles(slide_id)[:].shape[0] == cache.metadata(slide_id)["num_tiles"]
    assert subprocess.run(command, capture_output=True).returncode == 0
    rows = manifest_rows(out / "manifest.csv")
    assert {row["status"] for sid, row in rows.items() if sid in survivors} == {"skipped"}
    assert len(SlideCache(out)) == len(slides)


def test_shards_partition_the_cohort(slides_dir, tmp_path):
    jobs = [Job(f"s{i:02d}", Path(f"s{i}.svs")) for i in range(11)]
    shards = [select_shard(list(reversed(jobs)), (i, 3)) for i in range(3)]
    ids = [job.item_id for shard in shards for job in shard]
    assert sorted(ids) == sorted(job.item_id for job in jobs) and len(ids) == len(set(ids))
    params = TilingParams(target_mpp=1.0, tile_size=64)
    for i in range(2):
        tile([slides_dir], tmp_path / "c", params=params, shard=(i, 2))
    assert SlideCache(tmp_path / "c").ids == ["aperio-050", "generic-025"]
    one = manifest_rows(tmp_path / "c" / "manifest.shard-0-of-2.csv")
    two = manifest_rows(tmp_path / "c" / "manifest.shard-1-of-2.csv")
    assert len(one) == len(two) == 1 and set(one) | set(two) == {"aperio-050", "generic-025"}


def test_worker_processes_give_the_same_cache(slides_dir, tmp_path):
    params = TilingParams(target_mpp=1.0, tile_size=64)
    tile([slides_dir], tmp_path / "one", params=params)
    tile([slides_dir], tmp_path / "two", params=params, workers=2)
    a, b = SlideCache(tmp_path / "one"), SlideCache(tmp_path / "two")
    assert a.ids == b.ids
    for slide_id in a.ids:
        np.testing.assert_array_equal(a.tiles(slide_id)[:], b.tiles(slide_id)[:])


def test_duplicate_ids_and_bad_csv_are_refused(slides_dir, tmp_path):
    other = tmp_path / "x"
    other.mkdir()
    (other / "generic-025.tiff").write_bytes((slides_dir / "generic-025.tiff").read_bytes())
    assert cli(["tile", str(slides_dir), str(other), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("id,file\na,b.svs\n")
    assert cli(["tile", str(bad), "--out", str(tmp_path / "c"), "--quiet"]) == 2


def test_info_command_summarises_a_cache(slides_dir, tmp_path, capsys):
    tile([slides_dir / "aperio-050.svs"], tmp_path / "c", params=TilingParams(target_mpp=1.0, tile_size=64))
    assert cli(["info", str(tmp_path / "c")]) == 0
    assert "aperio-050" in capsys.readouterr().out
    assert cli(["info", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("target_mpp, resample", [(0.5, "box"), (0.61, "box"), (0.61, "lanczos")])
def test_direct_decoding_and_openslide_give_the_same_cache(slides_dir, tmp_path, monkeypatch, target_mpp, resample):
    """Same pixels whether tiles come from the direct decoder (which skips source tiles no kept tile
    reaches, and uses an exact integer reduction where it can) or from OpenSlide reading everything."""
    from medssl.preprocess import slides as slides_mod

    params = TilingParams(target_mpp=target_mpp, tile_size=64, resample=resample)
    tile([slides_dir], tmp_path / "fast", params=params)
    monkeypatch.setattr(slides_mod, "DIRECT_VENDORS", ())
    tile([slides_dir], tmp_path / "slow", params=params, threads=1)
    fast, slow = SlideCache(tmp_path / "fast"), SlideCache(tmp_path / "slow")
    for slide_id in fast.ids:
        assert (fast.metadata(slide_id)["reader"], slow.metadata(slide_id)["reader"]) == ("tifffile", "openslide")
        np.testing.assert_array_equal(fast.tiles(slide_id)[:], slow.tiles(slide_id)[:])
