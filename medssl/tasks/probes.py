"""Offline probes (``medssl probe``): logistic-regression and kNN probes and the few-shot protocol on
embeddings written once by ``medssl embed`` — eva's "offline" mode, where the encoder never runs again.

What one sample is (``level``):
- ``slide`` / ``volume``: one per slide or volume, its embedding the **mean of its tile (or axial slice)
  embeddings** — the simplest slide embedding, the one slide-embedding papers compare against; it
  weighs every tile alike, and for volumes every slice, background slices included.
- ``tile`` / ``slice``: one per embedding row, labelled by a CSV with an ``index`` column (the tile's row
  in the cache, or the axial slice z) or, without one, by its slide's label (weak labels).
  The two names of each level are aliases, so ``--level slide`` works on a volume cache too.

Where labels, splits and cases come from:
- labels: the cache's ``label`` per slide (``medssl tile`` records the cohort CSV's label column), or a
  CSV (``--labels``) with ``slide_id`` (tile caches) or ``volume_id`` (volume caches) and ``label`` columns,
  plus ``index`` for per-tile/slice labels. Volume caches keep no class labels (their label column is a
  label map), so they need the CSV. With a CSV only the items it lists are probed.
- splits: the CSV's ``split`` column, else the cache's ``split`` per item, else — when no item has one —
  a seeded case-level stratified split (:func:`medssl.data.splits.stratified_case_split`, 60/20/20).
  Samples of one case (the cache's ``case_id``, else the item itself) never fall in two splits.
- the probes train on ``train`` and report on ``test`` (``val`` when there is no test split); with both,
  the logistic probe's ``l2`` is chosen on ``val`` (:mod:`medssl.eval.probes` has the protocol).

Outputs (written atomically into ``out``): ``results.json`` (everything, per-fold few-shot values included)
and ``few_shot.csv`` (one row per probe and k: mean and std of each metric over the folds).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medssl.cache import EmbeddingCache, SlideCache, VolumeCache
from medssl.data.splits import check_classes, read_label_csv, stratified_case_split
from medssl.errors import CacheError, InputError
from medssl.eval.probes import (
    AVAILABLE_PROBES,
    DEFAULT_L2,
    KNN_K,
    KNN_TEMPERATURE,
    L2_GRID,
    METRICS,
    PROBES,
    SKLEARN_C,
    classification_metrics,
    few_shot,
    get_probe,
    select_l2,
)
from medssl.eval.results import write_csv_atomic
from medssl.files import write_text_atomic

ITEM_LEVELS, ROW_LEVELS = ("slide", "volume"), ("tile", "slice")
SPLITS = ("train", "val", "test")
# the per-row label column: "index", or "tile"/"slice" as write_tile_labels and the fine-tuning DataModules name it
ROW_COLUMNS = ("index", "tile", "slice")


@dataclass
class ProbeSet:
    """Samples ready to probe: features ``[N, D]`` and, per sample, its class name, case and split."""

    x: torch.Tensor
    labels: list[str]
    cases: list[str]
    splits: list[str]
    label_source: str
    split_source: str

    def select(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)


def probe_embeddings(
    features: str | os.PathLike,
    cache: str | os.PathLike,
    out: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    level: str = "slide",
    label_column: str = "label",
    classes: Sequence[str] | None = None,
    shots: Sequence[int] = (1, 10, 25),
    folds: int = 10,
    probes: Sequence[str] = PROBES,
    l2: float | None = None,
    split_seed: int = 0,
    device: str = "cpu",
    stains: Sequence[str] | None = None,
) -> dict:
    """Probe the embedding folder ``features`` (of the tile or volume cache ``cache``), write
    ``results.json`` and ``few_shot.csv`` into ``out`` and return the results. ``l2=None`` chooses it on
    the val split when there is a test split too (else :data:`~medssl.eval.probes.DEFAULT_L2`). ``device``
    (e.g. ``cuda``) runs the probes there: kNN's similarity matmul is what takes time on a CPU. ``stains``
    keeps the slides of those stains only (e.g. ``["HE"]`` in a multistain cohort)."""
    unknown = sorted(set(probes) - set(AVAILABLE_PROBES))
    if unknown or not probes:
        raise InputError(f"unknown probe(s) {unknown or list(probes)}; choose from {list(AVAILABLE_PROBES)}")
    data = load_probe_set(features, cache, labels_csv, level, label_column, split_seed, stains)
    results = {
        "features": str(Path(features).resolve()),
        "cache": str(Path(cache).resolve()),
        "level": level,
        **run_probes(data, classes, shots, folds, probes, l2, where=str(labels_csv or cache), device=device),
    }
    write_results(out, results)
    return results


def load_probe_set(
    features: str | os.PathLike,
    cache: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    level: str = "slide",
    label_column: str = "label",
    split_seed: int = 0,
    stains: Sequence[str] | None = None,
) -> ProbeSet:
    """Features, labels, cases and splits of every labelled sample (see the module notes)."""
    if level not in ITEM_LEVELS + ROW_LEVELS:
        raise InputError(f"level must be one of {list(ITEM_LEVELS + ROW_LEVELS)}, got {level!r}")
    embeddings = EmbeddingCache(features)
    kind = str(embeddings.params.get("items"))
    reader = SlideCache(cache) if kind == "slides" else VolumeCache(cache)
    key = "slide_id" if kind == "slides" else "volume_id"
    meta = {item: reader.metadata(item) for item in reader.ids}
    if stains is not None:
        meta = {item: m for item, m in meta.items() if str(m.get("stain") or "") in set(stains)}
        if not meta:
            raise InputError(f"{cache}: no slide has a stain among {list(stains)}")
    per_slide = embeddings.params.get("level") == "slide"  # medssl embed-slides: one row per slide
    if per_slide:
        if level not in ITEM_LEVELS:
            raise InputError(f"{features}: holds one embedding per slide; probe it with --level slide")
        meta = {item: m for item, m in meta.items() if item in embeddings}
    item_labels, row_labels, csv_splits = _labels(meta, labels_csv, key, label_column, kind)
    items = sorted(item_labels)
    if row_labels is not None and level in ITEM_LEVELS:
        raise InputError(
            f"{labels_csv}: per-{key[:-3]} labels need one label per {key[:-3]}, but it has a row column "
            f"({'/'.join(ROW_COLUMNS)}); use --level {'tile' if kind == 'slides' else 'slice'} or drop the column"
        )
    embeddings.require(items)
    cases = {item: str(meta[item].get("case_id") or item) for item in items}
    splits, split_source = _splits(items, meta, csv_splits, cases, item_labels, row_labels, split_seed, labels_csv)
    xs: list[np.ndarray] = []
    labels: list[str] = []
    sample_items: list[str] = []
    for item in items:
        rows = embeddings.features(item)
        expected = (
            1 if per_slide else reader.num_tiles(item) if isinstance(reader, SlideCache) else reader.shape(item)[0]
        )
        if rows.shape[0] != expected or expected == 0:
            raise CacheError(
                f"{features}: {rows.shape[0]} embedding rows for {expected} {'tiles' if kind == 'slides' else 'slices'}"
                f" of {item!r}; re-run medssl embed on {cache}"
            )
        x, names = _samples(np.asarray(rows[:], dtype=np.float32), item, level, item_labels, row_labels, labels_csv)
        xs.append(x)
        labels.extend(names)
        sample_items.extend([item] * len(names))
    return ProbeSet(
        x=torch.from_numpy(np.concatenate(xs)),
        labels=labels,
        cases=[cases[item] for item in sample_items],
        splits=[splits[item] for item in sample_items],
        label_source=str(labels_csv) if labels_csv else "cache",
        split_source=split_source,
    )


def _samples(
    values: np.ndarray, item: str, level: str, item_labels, row_labels, labels_csv
) -> tuple[np.ndarray, list[str]]:
    """One item's samples and their class names: its mean row (item level), or its labelled rows."""
    if level in ITEM_LEVELS:
        return values.mean(0, dtype=np.float64, keepdims=True).astype(np.float32), [item_labels[item]]
    if row_labels is None:
        return values, [item_labels[item]] * len(values)
    pairs = sorted(row_labels[item].items())
    bad = [index for index, _ in pairs if index >= len(values)]
    if bad:
        raise InputError(f"{labels_csv}: {item!r} has {len(values)} rows; rows {bad[:5]} are out of range")
    return values[np.array([index for index, _ in pairs], dtype=np.int64)], [name for _, name in pairs]


def _labels(
    meta: Mapping[str, dict], labels_csv, key: str, label_column: str, kind: str
) -> tuple[dict[str, str], dict[str, dict[int, str]] | None, dict[str, str] | None]:
    """Item labels, per-row labels (CSV with an index column) and CSV splits, checked against the cache."""
    if labels_csv is None:
        item_labels = {item: str(m["label"]) for item, m in meta.items() if m.get("label") not in (None, "")}
        if kind == "volumes" or not item_labels:
            raise InputError(
                f"labels missing: the cache's {kind} carry no class label; pass --labels CSV with columns "
                f"{key},{label_column} (and {'tile' if kind == 'slides' else 'slice'} or index for per-row labels)"
            )
        missing = sorted(set(meta) - set(item_labels))
        if missing:
            raise InputError(
                f"labels missing for {len(missing)} {kind} in the cache ({', '.join(missing[:5])}); "
                f"label them or pass --labels CSV listing the {kind} to probe"
            )
        return item_labels, None, None
    columns = _columns(labels_csv)
    csv_splits = read_label_csv(labels_csv, key, "split") if "split" in columns else None
    row_labels = None
    row_column = next((name for name in ROW_COLUMNS if name in columns), None)
    if row_column is not None:
        row_labels = _read_row_labels(labels_csv, key, label_column, row_column)
        item_labels = {item: Counter(rows.values()).most_common(1)[0][0] for item, rows in row_labels.items()}
    else:
        item_labels = read_label_csv(labels_csv, key, label_column)
    absent = sorted(set(item_labels) - set(meta))
    if absent:
        raise InputError(f"{labels_csv}: {key} {absent[:5]} not among the complete {kind} of the cache")
    return item_labels, row_labels, csv_splits


def _columns(path) -> list[str]:
    if not Path(path).is_file():
        raise InputError(f"{path}: label file not found")
    with open(path, newline="") as handle:
        return next(csv.reader(handle), [])


def _read_row_labels(path, key: str, label_column: str, row_column: str) -> dict[str, dict[int, str]]:
    """``{item: {row: label}}`` from a CSV with ``key``, the row number (``row_column``) and the label column."""
    out: dict[str, dict[int, str]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if key not in (reader.fieldnames or []) or label_column not in (reader.fieldnames or []):
            raise InputError(f"{path}: needs columns {key!r}, {row_column!r} and {label_column!r}")
        for line, row in enumerate(reader, start=2):
            item, value = (row.get(key) or "").strip(), (row.get(label_column) or "").strip()
            try:
                index = int(row.get(row_column) or "")
            except ValueError:
                raise InputError(
                    f"{path}, line {line}: {row_column} must be a row number, got {row.get(row_column)!r}"
                ) from None
            if not item or not value or index < 0:
                raise InputError(f"{path}, line {line}: empty {key!r} or {label_column!r}, or a negative index")
            rows = out.setdefault(item, {})
            if rows.get(index, value) != value:
                raise InputError(f"{path}, line {line}: {key} {item!r} row {index} has two labels")
            rows[index] = value
    if not out:
        raise InputError(f"{path}: no labelled rows")
    return out


def _splits(items, meta, csv_splits, cases, item_labels, row_labels, seed: int, labels_csv) -> tuple[dict, str]:
    """Each item's split and where the splits came from; a case in two splits is refused."""
    if csv_splits is not None:
        splits, source = {item: csv_splits.get(item, "") for item in items}, str(labels_csv)
    else:
        splits, source = {item: str(meta[item].get("split") or "") for item in items}, "cache"
    if not any(splits.values()):
        case_labels = _case_labels(items, cases, item_labels, row_labels)
        by_case = stratified_case_split(case_labels, seed=seed)
        return {item: by_case[cases[item]] for item in items}, f"stratified by case (seed {seed})"
    missing = [item for item in items if not splits[item]]
    if missing:
        raise InputError(
            f"{source}: no split for {len(missing)} item(s) ({', '.join(missing[:5])}) while others "
            f"have one; give every item a split ({'/'.join(SPLITS)}) or none"
        )
    odd = sorted({s for s in splits.values() if s not in SPLITS})
    if odd:
        raise InputError(f"{source}: unknown split name(s) {odd}; use {list(SPLITS)}")
    seen: dict[str, str] = {}
    for item in items:
        if seen.setdefault(cases[item], splits[item]) != splits[item]:
            raise InputError(
                f"{source}: case {cases[item]!r} is in both the {seen[cases[item]]} and "
                f"{splits[item]} splits; samples of one case must share a split"
            )
    return splits, source


def _case_labels(items, cases, item_labels, row_labels) -> dict[str, str]:
    """One label per case for stratification: the most common among its samples."""
    counts: dict[str, Counter] = {}
    for item in items:
        names = list(row_labels[item].values()) if row_labels else [item_labels[item]]
        counts.setdefault(cases[item], Counter()).update(names)
    return {case: counter.most_common(1)[0][0] for case, counter in counts.items()}


def run_probes(
    data: ProbeSet,
    classes: Sequence[str] | None = None,
    shots: Sequence[int] = (1, 10, 25),
    folds: int = 10,
    probes: Sequence[str] = PROBES,
    l2: float | None = None,
    where: str = "probe",
    device: str = "cpu",
) -> dict:
    """Full-data probes on the evaluation split and few-shot, as the ``results.json`` dictionary."""
    present = [s for s in SPLITS if s in set(data.splits)]
    if "train" not in present:
        raise InputError(f"{where}: no train split among the labelled samples (splits: {present})")
    evaluate = "test" if "test" in present else "val" if "val" in present else None
    if evaluate is None:
        raise InputError(f"{where}: nothing to report on: no test or val split among the labelled samples")
    classes = sorted(set(data.labels)) if classes is None else list(classes)
    labels = np.asarray(data.labels)
    check_classes({split: [data.labels[i] for i in data.select(split)] for split in present}, classes, where)
    if len(classes) < 2:
        raise InputError(f"{where}: probing needs two classes or more; found {classes}")
    index = {name: i for i, name in enumerate(classes)}
    x = data.x.to(device)
    y = torch.tensor([index[name] for name in data.labels], dtype=torch.long, device=device)
    train, test = data.select("train"), data.select(evaluate)
    tx, ty, qx, qy = x[train], y[train], x[test], y[test]
    selection = None
    if l2 is None and evaluate == "test" and "val" in present:
        val = data.select("val")
        l2, grid = select_l2(tx, ty, x[val], y[val], len(classes), L2_GRID)
        selection = {str(value): score for value, score in grid.items()}
    l2 = DEFAULT_L2 if l2 is None else l2
    full: dict[str, dict] = {}
    for name in probes:
        scores = get_probe(name, l2)(tx, ty, qx, len(classes))
        settings = {
            "linear": {"l2": l2, "l2_val_balanced_accuracy": selection},
            "knn": {"k": KNN_K, "temperature": KNN_TEMPERATURE},
            "logistic": {"C": SKLEARN_C, "standardized": False},
        }[name]
        full[name] = {**settings, "metrics": classification_metrics(scores, qy, len(classes))}
    train_cases = [data.cases[i] for i in train]
    shot_results = {
        name: {
            str(k): v for k, v in few_shot(tx, ty, qx, qy, shots, folds, name, train_cases, len(classes), l2).items()
        }
        for name in probes
    }
    return {
        "classes": classes,
        "labels": data.label_source,
        "splits": data.split_source,
        "evaluated_on": evaluate,
        "counts": {s: dict(sorted(Counter(labels[data.select(s)].tolist()).items())) for s in present},
        "cases": {s: len({data.cases[i] for i in data.select(s)}) for s in present},
        "dim": int(data.x.shape[1]),
        "probes": full,
        "few_shot": {"shots": list(shots), "folds": folds, "seeds": "fold f uses seed f", "results": shot_results},
    }


def write_results(out: str | os.PathLike, results: dict) -> Path:
    """``results.json`` and ``few_shot.csv`` into ``out``, each through a temporary file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    header = ["probe", "shots", "folds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + ["note"]
    rows = []
    for probe, per_k in results["few_shot"]["results"].items():
        for k, result in per_k.items():
            if "skipped" in result:
                rows.append([probe, k, 0] + [""] * 2 * len(METRICS) + [result["skipped"]])
                continue
            values = [_cell(result[s][m]) for m in METRICS for s in ("mean", "std")]
            rows.append([probe, k, len(result["folds"])] + values + [""])
    write_csv_atomic(out / "few_shot.csv", header, rows)
    return out


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def format_table(results: dict) -> str:
    """The figures of ``results`` as a small plain-text table (what ``medssl probe`` prints)."""
    few_shot = results["few_shot"]["results"]
    width = max(len(name) for name in ["probe", *results["probes"], *few_shot]) + 2  # "logistic" fills 8
    lines = [f"{'probe':<{width}}{'on':<6}" + "".join(f"{m:>20}" for m in METRICS)]
    for name, result in results["probes"].items():
        metrics = result["metrics"]
        cells = "".join(f"{_fmt(metrics[m]):>20}" for m in METRICS)
        lines.append(f"{name:<{width}}{results['evaluated_on']:<6}" + cells)
    lines.append(f"few-shot: k per class, mean ± std over {results['few_shot']['folds']} folds")
    lines.append(f"{'probe':<{width}}{'k':<6}" + "".join(f"{m:>20}" for m in METRICS))
    for name, per_k in few_shot.items():
        for k, result in per_k.items():
            if "skipped" in result:
                lines.append(f"{name:<{width}}{k:<6}  skipped: {result['skipped']}")
                continue
            cells = [f"{_fmt(result['mean'][m])} ± {_fmt(result['std'][m])}" for m in METRICS]
            lines.append(f"{name:<{width}}{k:<6}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
