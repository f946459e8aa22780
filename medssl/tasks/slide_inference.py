"""Whole-slide inference outside training: rebuild a slide model from its checkpoint, score whole
slides piece by piece, and write their heatmaps and scores (``medssl heatmap``)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from medssl.cache import SlideCache
from medssl.data.bags import BagPieceDataset, SlideBagDataset
from medssl.eval.slides import write_slides_csv
from medssl.methods.base import SlideClassifier
from medssl.tasks.checkpoints import load_medssl_model
from medssl.viz.heatmaps import write_heatmap


def load_slide_model(checkpoint: str | os.PathLike) -> SlideClassifier:
    """The slide model of a Lightning checkpoint written by medssl (read with ``weights_only=True``), in
    eval mode; see :func:`~medssl.tasks.checkpoints.load_medssl_model`."""
    return load_medssl_model(checkpoint, SlideClassifier, "a medssl slide model (ABMIL, INS)")


def score_slides(
    model: SlideClassifier,
    cache: str | os.PathLike | SlideCache,
    features: str | os.PathLike | None = None,
    slide_ids: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    piece_size: int = 8192,
    device: str = "cpu",
) -> Iterator[dict]:
    """A scored-slide record (:mod:`medssl.eval.slides`) per slide, read and scored one piece at a time
    (memory bounded by ``piece_size`` instances, whatever the bag size)."""
    bags = SlideBagDataset(cache, features=features, slide_ids=slide_ids, splits=splits, classes=model.classes)
    pieces = BagPieceDataset(bags, piece_size)
    model = model.to(device).eval()
    yield from model.score_pieces(pieces[index] for index in range(len(pieces)))


def write_slide_heatmaps(
    checkpoint: str | os.PathLike,
    cache: str | os.PathLike,
    out: str | os.PathLike,
    features: str | os.PathLike | None = None,
    slide_ids: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    piece_size: int = 8192,
    device: str = "cpu",
    stretch: bool | None = None,
) -> Path:
    """For each selected slide: ``out/<slide_id>.png`` (scores over the thumbnail; ``stretch`` as in
    :func:`~medssl.viz.heatmaps.normalise`, default the model's choice) and
    ``out/scores/<slide_id>.csv`` (x, y, score per tile); ``out/slides.csv`` with every slide's probability."""
    model = load_slide_model(checkpoint)
    out = Path(out)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    slide_cache = SlideCache(cache)
    records = []
    for record in score_slides(model, slide_cache, features, slide_ids, splits, piece_size, device):
        scores, coords = record["scores"].numpy(), record["coords"].numpy()
        write_heatmap(
            slide_cache,
            record["slide_id"],
            scores,
            out,
            coords=coords,
            title=model.instance_score_name,
            stretch=model.stretch_heatmaps if stretch is None else stretch,
        )
        with open(out / "scores" / f"{record['slide_id']}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["x", "y", model.instance_score_name.replace(" ", "_")])
            writer.writerows([int(x), int(y), f"{s:.6g}"] for (x, y), s in zip(coords, scores))
        records.append(record)
    write_slides_csv(out / "slides.csv", records)
    return out
