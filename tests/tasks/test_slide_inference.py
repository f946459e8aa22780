"""Whole-slide inference shares one piece-by-piece loop with training-time evaluation and one writer of
``slides.csv``: streamed pieces give the same scores as a whole bag in hand."""

from __future__ import annotations

import csv

import pytest
import torch

from medssl.data.bags import SlideBagDataset
from medssl.eval.slides import SLIDE_COLUMNS, write_slides_csv
from medssl.methods.abmil import ABMIL
from medssl.tasks.slide_inference import score_slides


def test_streamed_pieces_score_slides_as_whole_bags_do(lesion_cohort, tmp_path):
    torch.manual_seed(0)
    model = ABMIL(in_dim=lesion_cohort["in_dim"]).eval()
    bags = SlideBagDataset(lesion_cohort["cache"], features=lesion_cohort["features"], splits=["test"])
    records = list(
        score_slides(model, lesion_cohort["cache"], lesion_cohort["features"], splits=["test"], piece_size=37)
    )
    assert [r["slide_id"] for r in records] == bags.slide_ids
    for index, record in enumerate(records):
        bag = bags[index]
        probability, scores = model.score_bag(bag["instances"], piece_size=10_000)
        assert record["probability"] == pytest.approx(probability, abs=1e-6)
        torch.testing.assert_close(record["scores"], scores, atol=1e-7, rtol=1e-5)
        assert torch.equal(record["coords"], bag["coords"]) and record["label"] == bag["label"]
    with open(write_slides_csv(tmp_path / "slides.csv", records)) as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == SLIDE_COLUMNS
    assert [int(r["instances"]) for r in rows] == [len(r["scores"]) for r in records]
