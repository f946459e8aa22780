"""Slide-level evaluation: bag and instance metrics over scored slides, and the one writer of their
results (``slides.csv``, ``metrics.json``) that training, testing and ``medssl heatmap`` share.

A scored slide is a record ``{"slide_id", "label", "probability", "scores" [N], "coords" [N, 2],
"truth" [N] or None}``: the bag's positive probability, one score per instance (what a heatmap shows)
and, for evaluation only, instance truth (1 positive, 0 negative, NaN unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_specificity

from medssl.eval.results import write_csv_atomic, write_json_atomic

SLIDE_COLUMNS = ("slide_id", "label", "probability", "instances")


def slide_metrics(evaluated: list[dict]) -> dict[str, float | None]:
    """Bag AUROC and balanced accuracy (threshold 0.5) over slides with a label in {0, 1}; instance AUROC
    two ways: ``instance_auroc`` pools every instance with known truth into one ranking (scores must be
    comparable across slides), ``instance_auroc_per_slide`` is the mean AUROC within each positive slide
    that has both kinds of instance (localisation inside a slide, whatever each slide's scale). A metric
    that needs both classes is None without them."""
    labelled = [r for r in evaluated if r["label"] in (0, 1)]
    metrics: dict[str, float | None] = {
        "bag_auroc": None,
        "balanced_accuracy": None,
        "instance_auroc": None,
        "instance_auroc_per_slide": None,
        "slides": float(len(evaluated)),
    }
    if labelled:
        scores = torch.tensor([r["probability"] for r in labelled])
        labels = torch.tensor([r["label"] for r in labelled])
        if labels.unique().numel() == 2:
            metrics["bag_auroc"] = float(binary_auroc(scores, labels))
            sensitivity = float(binary_accuracy(scores[labels == 1], labels[labels == 1]))
            metrics["balanced_accuracy"] = 0.5 * (sensitivity + float(binary_specificity(scores, labels)))
    truths = [(r["scores"], r["truth"]) for r in evaluated if r["truth"] is not None]
    if truths:
        metrics["instance_auroc"] = auroc_of_known(torch.cat([s for s, _ in truths]), torch.cat([t for _, t in truths]))
    within = [auroc_of_known(r["scores"], r["truth"]) for r in evaluated if r["label"] == 1 and r["truth"] is not None]
    within = [value for value in within if value is not None]
    if within:
        metrics["instance_auroc_per_slide"] = sum(within) / len(within)
    return metrics


def auroc_of_known(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """AUROC over the instances whose truth is known (not NaN); None unless both classes occur."""
    known = ~torch.isnan(truth)
    if not known.any() or truth[known].unique().numel() != 2:
        return None
    return float(binary_auroc(scores[known], truth[known].long()))


def write_slides_csv(path: Path, evaluated: Sequence[dict]) -> Path:
    """``slides.csv``: slide_id, label, probability, instances (one row per scored slide), written
    atomically (:func:`~medssl.eval.results.write_csv_atomic`), so a reader never sees half a table."""
    rows = ([r["slide_id"], r["label"], f"{r['probability']:.6f}", len(r["scores"])] for r in evaluated)
    return write_csv_atomic(path, SLIDE_COLUMNS, rows)


def write_results(folder: Path, evaluated: list[dict], metrics: dict, epoch: int) -> None:
    """``slides.csv`` and ``metrics.json`` of one evaluation, each written whole and atomically."""
    write_slides_csv(folder / "slides.csv", evaluated)
    write_json_atomic(folder / "metrics.json", {"epoch": epoch, **metrics})
