"""DICOM whole-slide series: one folder of instances (one per level) is one slide."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import openslide
import pytest

from medssl.cache import SlideCache
from medssl.preprocess import TilingParams, tile_slides
from medssl.preprocess.dicom_wsi import folder_series, series_slide_id
from medssl.preprocess.slides import Slide
from medssl.synthetic.dicom_wsi import write_dicom_wsi, write_secondary_capture
from medssl.synthetic.slides import Ellipse, SlideLayout
from tests.manifests import manifest_rows

LAYOUT = SlideLayout(width=1024, height=1024, tissue=[Ellipse(512, 512, 400, 350)])
PARAMS = TilingParams(target_mpp=0.5, tile_size=64, min_tissue=0.5)  # level 0's MPP: tiles are its pixels
COARSE = TilingParams(target_mpp=2.0, tile_size=32)


@pytest.fixture()
def cohort(tmp_path) -> Path:
    """slides/case-12/: a 2-level DICOM WSI (1024² and 256², 256-px JPEG frames, 0.5 µm/px) and a
    secondary-capture DICOM (a label photo) that is no slide."""
    folder = tmp_path / "slides" / "case-12"
    write_dicom_wsi(folder, LAYOUT, mpp=0.5, downsamples=(1, 4), tile=256)
    write_secondary_capture(folder / "label-photo.dcm", np.full((32, 48, 3), 90, dtype=np.uint8))
    return tmp_path / "slides"


def test_a_dicom_series_is_one_slide_with_its_mpp_and_openslide_pixels(cohort, tmp_path):
    for name in ("level-0.dcm", "level-1.dcm"):  # OpenSlide opens the series from any of its files
        with Slide(cohort / "case-12" / name) as slide:
            assert (slide.vendor, slide.mpp, slide.mpp_source) == ("dicom", 0.5, "metadata")
            assert slide._osr.level_dimensions == ((1024, 1024), (256, 256))
    summary = tile_slides([cohort], tmp_path / "c", PARAMS, progress=False)
    manifest = manifest_rows(summary.manifest)
    assert manifest["case-12"]["status"] == "done"
    assert manifest["label-photo"]["status"] == "skipped"
    assert "not a whole-slide image (SOP class Secondary Capture Image Storage)" in manifest["label-photo"]["reason"]
    cache = SlideCache(tmp_path / "c")
    assert cache.ids == ["case-12"]
    meta = cache.metadata("case-12")
    assert (meta["vendor"], meta["mpp"], meta["level_count"], meta["dimensions"]) == ("dicom", 0.5, 2, [1024, 1024])
    assert sorted(f["name"] for f in meta["source"]["files"]) == ["level-0.dcm", "level-1.dcm"]
    tiles, coords = np.asarray(cache.tiles("case-12")[:]), cache.coords("case-12")
    assert len(tiles) > 50
    with openslide.OpenSlide(str(cohort / "case-12" / "level-1.dcm")) as osr:
        for pixels, (x, y) in zip(tiles[::7], coords[::7]):
            expected = np.asarray(osr.read_region((int(x), int(y)), 0, (64, 64)).convert("RGB"))
            np.testing.assert_array_equal(pixels, expected)


def test_any_changed_instance_retiles_the_slide(cohort, tmp_path):
    first = tile_slides([cohort], tmp_path / "c", COARSE, progress=False)
    assert {r.item_id: r.status for r in first.results}["case-12"] == "done"
    again = tile_slides([cohort], tmp_path / "c", COARSE, progress=False)
    assert {r.item_id: r.status for r in again.results}["case-12"] == "skipped"
    os.utime(cohort / "case-12" / "level-1.dcm", ns=(time.time_ns(), time.time_ns()))  # not the opened file
    third = tile_slides([cohort], tmp_path / "c", COARSE, progress=False)
    assert {r.item_id: r.status for r in third.results}["case-12"] == "done"


def test_a_glob_of_instances_is_one_job_and_two_series_in_a_folder_get_distinct_ids(tmp_path):
    folder = tmp_path / "scans"
    write_dicom_wsi(folder, LAYOUT, mpp=1.0, downsamples=(1,), container="S-001", prefix="a")
    write_dicom_wsi(folder, LAYOUT, mpp=1.0, downsamples=(1,), container="S-002", prefix="b")
    series = folder_series(folder)
    assert len(series) == 2
    assert sorted(series_slide_id(s) for s in series.values()) == ["scans-S-001", "scans-S-002"]
    summary = tile_slides([str(folder / "*.dcm")], tmp_path / "c", COARSE, progress=False)
    assert sorted((r.item_id, r.status) for r in summary.results) == [("scans-S-001", "done"), ("scans-S-002", "done")]
    assert {Path(r.path).name for r in summary.results} == {"a-0.dcm", "b-0.dcm"}
