"""CLAM/TRIDENT HDF5 coordinates and QuPath annotations: export, import (``medssl tile --coords``),
and tiling restricted by GeoJSON regions (``--annotations``)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medssl.cache import SlideCache
from medssl.cli import main as cli
from medssl.export.embeddings import embed_cache
from medssl.nn.backbones import build_encoder
from medssl.preprocess import RegionParams, TilingParams, tile_slides
from medssl.preprocess.annotations import AnnotationPolygon, rasterise
from medssl.preprocess.patch_coords import coords_attrs, stated_footprints
from tests.layouts import LAYOUT

SLIDE = "generic-025"  # 4096 × 3072 at 0.25 µm/px, levels (1, 4, 16); tissue: tests.layouts.LAYOUT
ALIGNED = TilingParams(target_mpp=1.0, tile_size=64)  # 256 level-0 px per tile = 8 mask px at 8 µm/px


def tile(inputs, out, params=ALIGNED, **kwargs):
    return tile_slides([str(p) for p in inputs], out, params, progress=False, **kwargs)


def reasons(summary) -> dict[str, str]:
    return {r.item_id: r.reason for r in summary.failed}


def cells(cache: Path, slide_id: str = SLIDE) -> set[tuple[int, int]]:
    return {(int(c), int(r)) for c, r in SlideCache(cache).grid(slide_id)}


# -- coordinates ------------------------------------------------------------------------------------
def test_round_trip_through_h5_gives_identical_coords_and_pixels(slides_dir, tmp_path, capsys):
    """Exact-MPP tiles with a fractional scale (2.4 level-0 px per target px): medssl's own coordinates
    re-tile bit-identically, through the command line."""
    slide = slides_dir / f"{SLIDE}.tiff"
    flags = ["--mpp", "0.6", "--tile-size", "64", "--quiet"]
    assert cli(["tile", str(slide), "--out", str(tmp_path / "a"), *flags]) == 0
    assert cli(["export-h5", str(tmp_path / "a"), "--out", str(tmp_path / "h5")]) == 0
    assert cli(["tile", str(slide), "--out", str(tmp_path / "b"), *flags, "--coords", str(tmp_path / "h5")]) == 0
    a, b = SlideCache(tmp_path / "a"), SlideCache(tmp_path / "b")
    np.testing.assert_array_equal(b.coords(SLIDE), a.coords(SLIDE))
    np.testing.assert_array_equal(b.tiles(SLIDE)[:], a.tiles(SLIDE)[:])
    np.testing.assert_array_equal(b.tissue(SLIDE), a.tissue(SLIDE))
    assert b.metadata(SLIDE)["placement"]["off_grid"] == 0
    assert b.params["regions"] == {"coords": True}
    with h5py.File(tmp_path / "h5" / f"{SLIDE}.h5") as handle:
        coords, attrs = handle["coords"][:], dict(handle["coords"].attrs)
    assert coords.dtype == np.int64 and coords.shape == (a.num_tiles(SLIDE), 2)
    # TRIDENT's meaning: 64 px at 10/0.6 x of a 40x slide; 153.6 level-0 px, rounded.
    assert (attrs["patch_size"], attrs["patch_size_level0"], attrs["overlap"]) == (64, 154, 0)
    assert attrs["level0_magnification"] / attrs["target_magnification"] == pytest.approx(2.4)


def test_both_styles_state_the_tile_footprint_and_clam_counts_level_pixels():
    meta = {"slide_id": "s", "mpp": 0.25, "target_mpp": 0.6, "tile_size": 64, "stride": 48,
            "tile_size_level0": 153.6, "dimensions": [4096, 3072]}  # fmt: skip
    downsample = [1.0, 4.0, 16.0].__getitem__
    for style in ("trident", "clam"):
        stated = stated_footprints(coords_attrs(meta, style), downsample, 3, Path("s.h5"))
        assert len(stated) >= 3 and all(abs(side - 153.6) <= allowed for _, side, allowed in stated)
    clam = coords_attrs(meta, "clam")
    assert (clam["patch_size"], clam["patch_level"], clam["overlap"]) == (154, 0, 38)  # 16 target px = 38.4 l0
    assert coords_attrs(meta, "trident")["overlap"] == 16
    # A CLAM file of 64-px patches at level 1 (downsample 4) spans 256 level-0 px, give or take 2.
    ((_, side, allowed),) = stated_footprints({"patch_size": 64, "patch_level": 1}, downsample, 3, Path("c.h5"))
    assert (side, allowed) == (256.0, 2.0)


def write_coords(path: Path, coords, **attrs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("coords", data=np.asarray(coords, dtype=np.int64)).attrs.update(attrs)
    return path


def test_trident_coordinates_off_the_grid_are_tiled_exactly_and_none_dropped(slides_dir, tmp_path):
    trident = {"patch_size": 64, "patch_size_level0": 256, "level0_magnification": 40, "target_magnification": 10}
    coords = [[1024, 1280], [1000, 1500], [1037, 1500], [3000, 1111], [3800, 60]]  # the last on bare glass
    write_coords(tmp_path / "h5" / f"{SLIDE}_patches.h5", coords, **trident)  # TRIDENT's file name
    summary = tile(
        [slides_dir / f"{SLIDE}.tiff"], tmp_path / "c", regions=RegionParams(coords_dir=str(tmp_path / "h5"))
    )
    assert not summary.failed
    cache = SlideCache(tmp_path / "c")
    np.testing.assert_array_equal(cache.coords(SLIDE), coords)  # same order, nothing dropped
    assert cache.metadata(SLIDE)["placement"] == {"from": "coords", "on_grid": 1, "off_grid": 4}
    tissue = cache.tissue(SLIDE)
    assert tissue[:4].min() > 0.9 and tissue[4] < 0.05
    # Each tile shows the layout from exactly its corner: closer than from a corner 8 level-0 px away.
    tiles = cache.tiles(SLIDE)[:].astype(float)
    for pixels, (x, y) in zip(tiles[:4], coords[:4]):
        right = np.abs(pixels - LAYOUT.render(x, y, 64, 64, downsample=4.0)).mean()
        shifted = np.abs(pixels - LAYOUT.render(x + 8, y + 8, 64, 64, downsample=4.0)).mean()
        assert right < 0.7 * shifted


def test_coordinates_that_disagree_with_the_cohort_or_are_missing_fail_their_slide(slides_dir, tmp_path):
    slide = slides_dir / f"{SLIDE}.tiff"
    (tmp_path / "cohort.csv").write_text(f"slide_id,path\nquantised,{slide}\nabsent,{slide}\n")
    # TRIDENT calls a 0.25 µm/px slide 40x: 64 px at 20x are 128 level-0 px, not the cohort's 256.
    write_coords(tmp_path / "h5" / "quantised.h5", [[1024, 1024]], patch_size=64, level0_magnification=40,
                 target_magnification=20)  # fmt: skip
    summary = tile([tmp_path / "cohort.csv"], tmp_path / "c", regions=RegionParams(coords_dir=str(tmp_path / "h5")))
    why = reasons(summary)
    assert "quantised.h5" in why["quantised"] and "128.00" in why["quantised"] and "--mpp 0.5" in why["quantised"]
    assert "absent.h5" in why["absent"] and "no coordinates file" in why["absent"]


def test_export_of_embeddings_writes_features_coords_and_pt(slides_dir, tmp_path):
    tile([slides_dir / f"{SLIDE}.tiff"], tmp_path / "c")
    torch.manual_seed(0)
    encoder = build_encoder(name="resnet18", width=0.25)
    embed_cache(encoder, tmp_path / "c", tmp_path / "e", batch_size=256, progress=False)
    code = cli(["export-h5", str(tmp_path / "c"), "--embeddings", str(tmp_path / "e"), "--out", str(tmp_path / "x"),
                "--pt", "--style", "clam"])  # fmt: skip
    assert code == 0
    cache = SlideCache(tmp_path / "c")
    with h5py.File(tmp_path / "x" / "h5_files" / f"{SLIDE}.h5") as handle:
        features, coords = handle["features"][:], handle["coords"][:]
        attrs = dict(handle["coords"].attrs)
    assert features.dtype == np.float32 and features.shape == (cache.num_tiles(SLIDE), encoder.out_dim)
    np.testing.assert_array_equal(coords, cache.coords(SLIDE))
    assert (attrs["patch_size"], attrs["patch_level"]) == (256, 0)
    saved = torch.load(tmp_path / "x" / "pt_files" / f"{SLIDE}.pt", weights_only=True)
    np.testing.assert_array_equal(saved.numpy(), features)
    assert (tmp_path / "x" / "slides.csv").read_text().splitlines()[1].startswith(f"{SLIDE},{SLIDE},")


# -- annotations ------------------------------------------------------------------------------------
def square(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def tumour_geojson(hole: bool = True, rows: tuple[int, int] = (3, 9)) -> dict:
    """QuPath-style annotations (level-0 px): a Tumor MultiPolygon of grid cells columns 3..5 × ``rows``
    (minus cell (4, 5) with ``hole``) and columns 11..12 × rows 5..6, and a Stroma square over cells
    6..7 × 3..4 that the class filter must ignore. One grid cell is 256 level-0 px."""
    big = [square(768, rows[0] * 256, 1536, rows[1] * 256)] + ([square(1024, 1280, 1280, 1536)] if hole else [])
    small = [square(2816, 1280, 3328, 1792)]
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [big, small]},
             "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(1536, 768, 2048, 1280)]},
             "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}}},
        ],
    }  # fmt: skip


def tumour_cells(hole: bool = True, rows: tuple[int, int] = (3, 9)) -> set[tuple[int, int]]:
    big = {(c, r) for c in range(3, 6) for r in range(*rows)} - ({(4, 5)} if hole else set())
    return big | {(c, r) for c in (11, 12) for r in (5, 6)}


@pytest.fixture(scope="module")
def plain_cells(slides_dir, tmp_path_factory) -> set[tuple[int, int]]:
    out = tmp_path_factory.mktemp("plain") / "c"
    assert not tile([slides_dir / f"{SLIDE}.tiff"], out).failed
    return cells(out)


def annotated(slides_dir, folder: Path, mode: str, geojson: dict | str) -> tuple[Path, object]:
    (folder / "qupath").mkdir(parents=True, exist_ok=True)
    text = geojson if isinstance(geojson, str) else json.dumps(geojson)
    (folder / "qupath" / f"{SLIDE}.geojson").write_text(text)
    regions = RegionParams(annotations_dir=str(folder / "qupath"), annotation_mode=mode, annotation_classes=("Tumor",))
    return folder / "c", tile([slides_dir / f"{SLIDE}.tiff"], folder / "c", regions=regions)


def test_include_keeps_exactly_the_tiles_inside_the_annotation(slides_dir, tmp_path, plain_cells):
    assert tumour_cells() <= plain_cells  # every annotated cell is tissue: the test can tell
    out, summary = annotated(slides_dir, tmp_path, "include", tumour_geojson())
    assert not summary.failed
    assert cells(out) == tumour_cells()  # the hole (4, 5) and the Stroma square are left out
    cache = SlideCache(out)
    meta = cache.metadata(SLIDE)
    assert meta["annotation"]["polygons"] == 2 and meta["source"]["annotation"]["sha256"]
    assert cache.params["regions"] == {"annotations": {"mode": "include", "classes": ["Tumor"]}}
    region = cache.annotation_mask(SLIDE)
    assert region is not None and region.sum() == len(tumour_cells()) * 64  # 8 × 8 mask px per cell
    assert (out / "qc" / f"{SLIDE}.png").is_file()


def test_exclude_keeps_the_complement_and_the_hole(slides_dir, tmp_path, plain_cells):
    (tmp_path / "qupath").mkdir()
    (tmp_path / "qupath" / f"{SLIDE}.geojson").write_text(json.dumps(tumour_geojson()))
    out = tmp_path / "c"
    flags = ["--mpp", "1", "--tile-size", "64", "--annotation-mode", "exclude", "--annotation-class", "Tumor"]
    assert cli(["tile", str(slides_dir / f"{SLIDE}.tiff"), "--out", str(out), "--quiet", *flags,
                "--annotations", str(tmp_path / "qupath")]) == 0  # fmt: skip
    assert cells(out) == plain_cells - tumour_cells()
    assert (4, 5) in cells(out)


def test_a_changed_annotation_retiles_the_slide_on_resume(slides_dir, tmp_path):
    out, first = annotated(slides_dir, tmp_path, "include", tumour_geojson(hole=False))
    assert first.counts()["done"] == 1
    _, again = annotated(slides_dir, tmp_path, "include", tumour_geojson(hole=False))
    assert again.counts()["skipped"] == 1
    _, changed = annotated(slides_dir, tmp_path, "include", tumour_geojson(hole=False, rows=(3, 6)))
    assert changed.counts()["done"] == 1
    assert cells(out) == tumour_cells(hole=False, rows=(3, 6))


def test_bad_geojson_fails_its_slide_naming_the_file(slides_dir, tmp_path):
    slide = slides_dir / f"{SLIDE}.tiff"
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    two_points = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 9]]]}}
    (tmp_path / "line.geojson").write_text(json.dumps(two_points))
    (tmp_path / "cohort.csv").write_text(
        f"slide_id,path,annotation\nbroken,{slide},broken.geojson\nline,{slide},line.geojson\n"
    )
    why = reasons(tile([tmp_path / "cohort.csv"], tmp_path / "c"))
    assert "broken.geojson" in why["broken"] and "not a GeoJSON file" in why["broken"]
    assert "line.geojson" in why["line"] and "at least 3" in why["line"]


def test_rasterise_takes_pixels_whose_centre_is_inside():
    # Mask pixels of 32 level-0 px, centres at 16 + 32k: a square [20, 76) holds only the centre 48
    # (pixel 1); the square [0, 96) with a hole [32, 64) leaves the ring of 8 pixels around pixel (1, 1).
    one = rasterise([AnnotationPolygon(np.array(square(20, 20, 76, 76), dtype=float))], (4, 4), 32.0)
    assert np.argwhere(one).tolist() == [[1, 1]]
    ring = AnnotationPolygon(np.array(square(0, 0, 96, 96), float), (np.array(square(32, 32, 64, 64), float),))
    mask = rasterise([ring], (4, 4), 32.0)
    assert mask[:3, :3].sum() == 8 and not mask[1, 1] and not mask[3].any() and not mask[:, 3].any()
