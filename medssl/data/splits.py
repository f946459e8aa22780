"""Case-level splits and label fractions for downstream tasks.

Samples of one case (a patient: all slides, tiles, slices of it) always fall in the same split, so no
test figure is measured on a case the model trained on. Splits are stratified by the case's class and
seeded; label fractions take a seeded, stratified share of the *training cases* (the label-efficiency
protocol: 1 % of the labels means 1 % of the labelled patients, never 1 % of their tiles).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medssl.errors import InputError


def stratified_case_split(
    case_labels: Mapping[str, str],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, str]:
    """``{case: split}`` with each class's cases shuffled (``seed``) and dealt to the splits in
    ``fractions`` (default train 0.6, val 0.2, test 0.2; must sum to 1). Each class puts at least one
    case in every split when it has as many cases as splits, so no split silently lacks a class."""
    fractions = dict(fractions or {"train": 0.6, "val": 0.2, "test": 0.2})
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6) or min(fractions.values()) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    names = list(fractions)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for label in sorted(set(case_labels.values())):
        cases = sorted(c for c, v in case_labels.items() if v == label)
        cases = [cases[i] for i in rng.permutation(len(cases))]
        counts = _allocate(len(cases), [fractions[n] for n in names])
        start = 0
        for name, count in zip(names, counts):
            out.update({case: name for case in cases[start : start + count]})
            start += count
    return out


def _allocate(n: int, shares: Sequence[float]) -> list[int]:
    """Integer counts summing to ``n`` in proportion to ``shares`` (largest remainders), with one per
    non-zero share first when ``n`` allows."""
    nonzero = [k for k, s in enumerate(shares) if s > 0]
    counts = [0] * len(shares)
    if n >= len(nonzero):
        for k in nonzero:
            counts[k] = 1
    rest = n - sum(counts)
    total = sum(shares)
    ideal = [rest * s / total for s in shares]
    floors = [int(math.floor(v)) for v in ideal]
    for k in sorted(range(len(shares)), key=lambda k: floors[k] - ideal[k])[: rest - sum(floors)]:
        floors[k] += 1
    return [c + f for c, f in zip(counts, floors)]


def label_fraction(case_labels: Mapping[str, str], fraction: float, seed: int = 0) -> list[str]:
    """A seeded, class-stratified ``fraction`` of the cases (at least one per class), sorted. ``1.0``
    keeps them all. The subsets of one seed are nested: the 1 % cases are among the 10 % cases."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for label in sorted(set(case_labels.values())):
        cases = sorted(c for c, v in case_labels.items() if v == label)
        order = [cases[i] for i in rng.permutation(len(cases))]
        chosen.extend(order[: max(1, round(fraction * len(cases)))])
    return sorted(chosen)


def read_label_csv(path: str | os.PathLike, key: str, label: str = "label") -> dict[str, str]:
    """``{row[key]: row[label]}`` from a CSV with a header; errors name the file, the row and the column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label file not found")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if key not in columns or label not in columns:
            raise InputError(f"{path}: needs columns {key!r} and {label!r}; it has {columns}")
        out: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            item, value = (row.get(key) or "").strip(), (row.get(label) or "").strip()
            if not item or not value:
                raise InputError(f"{path}, line {line}: empty {key!r} or {label!r}")
            if item in out and out[item] != value:
                raise InputError(f"{path}, line {line}: {key} {item!r} has two labels, {out[item]!r} and {value!r}")
            out[item] = value
    if not out:
        raise InputError(f"{path}: no labelled rows")
    return out


def check_classes(labels_by_split: Mapping[str, Sequence[str]], classes: Sequence[str], where: str) -> None:
    """Refuse labels outside ``classes`` and splits that miss a class or hold nothing, naming which."""
    known = set(classes)
    for split, labels in labels_by_split.items():
        if not labels:
            raise InputError(f"{where}: the {split} split is empty")
        unknown = sorted(set(labels) - known)
        if unknown:
            raise InputError(
                f"{where}: unknown class names {unknown} in the {split} split; classes are {list(classes)}"
            )
        missing = sorted(known - set(labels))
        if missing and split == "train":
            raise InputError(f"{where}: the train split has no samples of class {missing}")
