"""Slide-level evaluation: bag and instance metrics over scored slides, and the one writer of their
results (``slides.csv``, ``metrics.json``) that training, testing and ``medssl heatmap`` share.

A scored slide is a record ``{"slide_id", "label", "probability", "scores" [N], "coords" [N, 2],
"truth" [N] or None}``: the bag's positive probability, one score per instance (what a heatmap shows)
and, for evaluation only, instance truth (1 positive, 0 negative, NaN unknown).

Reading results back, for analysis: :func:`read_slide_scores` turns ``medssl heatmap``'s per-tile scores
into the instance part of such a record (numpy) in the cache's tile order, with truth from a tile-label CSV
(:func:`read_tile_truth`); :func:`top_tiles` picks the tiles to look at.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medssl.errors import InputError
from medssl.eval.results import write_csv_atomic, write_json_atomic

SLIDE_COLUMNS = ("slide_id", "label", "probability", "instances")


def slide_metrics(evaluated: list[dict]) -> dict[str, float | None]:
    """Bag AUROC and balanced accuracy (threshold 0.5) over slides with a label in {0, 1}; instance AUROC
    two ways: ``instance_auroc`` pools every instance with known truth into one ranking (scores must be
    comparable across slides), ``instance_auroc_per_slide`` is the mean AUROC within each positive slide
    that has both kinds of instance (localisation inside a slide, whatever each slide's scale). A metric
    that needs both classes is None without them."""
    # torchmetrics takes seconds to import: only where a metric is computed, not to read results back
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_specificity

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
    from torchmetrics.functional.classification import binary_auroc

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


def read_csv_rows(path: Path, what: str, reader=csv.reader) -> list:
    """Every row of a CSV through ``reader`` (``csv.reader`` or ``csv.DictReader``); an unreadable file is an
    :class:`InputError` that names it and ``what`` it should hold."""
    try:
        with open(path, newline="") as handle:
            return list(reader(handle))
    except OSError as error:
        raise InputError(f"{path}: cannot read {what} ({error.strerror or error})") from None


def read_instance_scores(path: str | os.PathLike) -> dict:
    """One slide's per-tile scores as ``medssl heatmap`` writes them (``scores/<slide_id>.csv``: x, y and
    one score column named after the score, e.g. ``attention_logit`` for ABMIL, ``instance_probability``
    for INS): ``{"coords": int64 [N, 2] level-0 corners, "scores": float64 [N], "name": column}``."""
    path = Path(path)
    rows = read_csv_rows(path, "instance scores", csv.reader)
    if not rows or len(rows[0]) != 3 or rows[0][:2] != ["x", "y"]:
        raise InputError(f"{path}: not a `medssl heatmap` scores file (header x,y,<score>; got {rows[:1]})")
    try:
        values = np.array([[float(v) for v in row] for row in rows[1:]], dtype=np.float64).reshape(-1, 3)
    except ValueError as error:
        raise InputError(f"{path}: a row is not three numbers ({error})") from None
    return {"coords": values[:, :2].astype(np.int64), "scores": values[:, 2], "name": rows[0][2]}


def align_to_tiles(coords: np.ndarray, values: np.ndarray, tile_coords: np.ndarray) -> np.ndarray:
    """``values`` given at level-0 corners ``coords [N, 2]``, put in the order of a slide's tiles
    (``tile_coords [M, 2]``, the cache's order): float64 ``[M]``, NaN for tiles without a value. Scored
    files are matched by position rather than trusted to share the cache's order; a corner that is no
    tile raises ValueError (the scores come from another cache or tiling)."""
    tile_coords = np.asarray(tile_coords, dtype=np.int64).reshape(-1, 2)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(coords) != len(values):
        raise ValueError(f"{len(values)} values for {len(coords)} corners")
    keys = tile_coords[:, 0] * (1 << 32) + tile_coords[:, 1]
    order = np.argsort(keys)
    wanted = coords[:, 0] * (1 << 32) + coords[:, 1]
    where = np.minimum(np.searchsorted(keys[order], wanted), max(len(keys) - 1, 0))
    found = keys[order][where] == wanted if len(keys) else np.zeros(len(wanted), dtype=bool)
    if not found.all():
        x, y = coords[np.flatnonzero(~found)[0]]
        raise ValueError(f"{int((~found).sum())} scored corners are not tiles of the slide, e.g. ({x}, {y})")
    aligned = np.full(len(tile_coords), np.nan)
    aligned[order[where]] = values
    return aligned


def read_tile_truth(
    path: str | os.PathLike, positive: str = "lesion", negative: str = "normal"
) -> dict[str, np.ndarray]:
    """Tile-level truth from a ``slide_id,tile,label`` CSV (``tile_labels.csv``, which
    :func:`~medssl.data.truth.write_tile_labels` makes from lesion masks): ``{slide_id: float32 [K]}``
    indexed by tile, 1 for ``positive``, 0 for ``negative``, NaN for tiles the file does not list
    (``K`` is the highest listed tile + 1; :func:`read_slide_scores` pads it to the slide's tiles)."""
    path = Path(path)
    rows = read_csv_rows(path, "tile labels", csv.DictReader)
    if rows and not {"slide_id", "tile", "label"} <= set(rows[0]):
        raise InputError(f"{path}: tile labels need columns slide_id, tile, label (got {sorted(rows[0])})")
    code = {positive: 1.0, negative: 0.0}
    listed: dict[str, list[tuple[int, float]]] = {}
    for line, row in enumerate(rows, start=2):
        if row["label"] not in code or not row["tile"].isdigit():
            raise InputError(
                f"{path}, line {line}: tile {row['tile']!r} labelled {row['label']!r}; "
                f"expected a tile index and {positive!r} or {negative!r}"
            )
        listed.setdefault(row["slide_id"], []).append((int(row["tile"]), code[row["label"]]))
    truth = {}
    for slide_id, pairs in listed.items():
        tiles, values = np.array(pairs).T
        truth[slide_id] = np.full(int(tiles.max()) + 1, np.nan, dtype=np.float32)
        truth[slide_id][tiles.astype(np.int64)] = values
    return truth


def read_slide_scores(
    folder: str | os.PathLike, slide_id: str, tile_coords: np.ndarray, truth: np.ndarray | None = None
) -> dict:
    """One slide of ``medssl heatmap``'s output ``folder`` as the instance part of a scored-slide record
    (the bag's label and probability are in ``folder/slides.csv``), in the cache's tile order
    (``tile_coords``, e.g. ``SlideCache.coords``): ``{"slide_id", "name" (the score's name), "coords"
    [M, 2], "scores" float64 [M] (NaN for unscored tiles), "truth" float32 [M] (NaN unknown)}``.
    ``truth`` is that slide's entry of :func:`read_tile_truth` (None: all unknown). Numpy, unlike
    training's records."""
    path = Path(folder) / "scores" / f"{slide_id}.csv"
    scored = read_instance_scores(path)
    tile_coords = np.asarray(tile_coords).reshape(-1, 2)
    try:
        scores = align_to_tiles(scored["coords"], scored["scores"], tile_coords)
    except ValueError as error:
        raise InputError(f"{path}: {error}; were these scores made from this cache?") from None
    truth = np.zeros(0, dtype=np.float32) if truth is None else np.asarray(truth, dtype=np.float32)
    if len(truth) > len(tile_coords):
        last = len(truth) - 1
        raise InputError(f"tile labels list tile {last} of {slide_id}, which has {len(tile_coords)} tiles")
    truth = np.concatenate([truth, np.full(len(tile_coords) - len(truth), np.nan, dtype=np.float32)])
    return {"slide_id": slide_id, "name": scored["name"], "coords": tile_coords, "scores": scores, "truth": truth}


def top_tiles(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first (ties by tile index; NaN never chosen): the
    tiles a model ranks as most lesion-like (INS) or most attended (ABMIL), to look at their pixels."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="stable")
    return order[~np.isnan(scores[order])][: max(int(k), 0)]
