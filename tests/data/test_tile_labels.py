"""Tile-level labels from lesion masks (for tile classification): a tile is a lesion when at least a
quarter of its footprint is lesion; negative slides without masks are all normal."""

from __future__ import annotations

import csv

from medssl.cache import SlideCache
from medssl.data.truth import LesionMasks, lesion_fraction, write_tile_labels
from medssl.preprocess import TilingParams, tile_slides
from medssl.synthetic.slides import write_lesion_cohort


def test_tile_labels_follow_the_masks_and_skip_unknown_truth(tmp_path):
    manifest = write_lesion_cohort(tmp_path / "slides", n_slides=2, size=2048, lesion_radius=200.0, splits=("train",))
    tile_slides([manifest], tmp_path / "cache", TilingParams(target_mpp=1.0, tile_size=32), progress=False)
    masks = tmp_path / "slides" / "masks"
    (masks / "lesion-cohort-000.png").unlink()  # the negative slide loses its mask: all normal by its label
    (masks / "lesion-cohort-001.png").rename(masks / "kept.png")  # the positive one: unknown, left out
    out = write_tile_labels(tmp_path / "cache", masks, tmp_path / "labels.csv", negative_slide_label="negative")
    rows = list(csv.DictReader(out.open()))
    cache = SlideCache(tmp_path / "cache")
    assert {r["slide_id"] for r in rows} == {"lesion-cohort-000"}
    assert len(rows) == cache.num_tiles("lesion-cohort-000") and {r["label"] for r in rows} == {"normal"}

    (masks / "kept.png").rename(masks / "lesion-cohort-001.png")
    rows = list(csv.DictReader(write_tile_labels(tmp_path / "cache", masks, out).open()))
    positive = [r for r in rows if r["slide_id"] == "lesion-cohort-001"]
    meta = cache.metadata("lesion-cohort-001")
    mask = LesionMasks(masks).mask("lesion-cohort-001")
    assert mask is not None
    fraction = lesion_fraction(mask, cache.coords("lesion-cohort-001"), meta["tile_size_level0"], meta["dimensions"])
    assert [r["label"] == "lesion" for r in positive] == list(fraction >= 0.25)
    assert 0 < sum(r["label"] == "lesion" for r in positive) < len(positive)
