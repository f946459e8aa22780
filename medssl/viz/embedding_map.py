"""The numbers behind an embedding map: features of many items (slides, volumes) sampled with their
item id and per-item attributes (label, stain, scanner, split), a 2D PCA of them with a fixed sign,
and how much neighbours in feature space share an attribute. A map coloured by stain or slide that
falls apart into clusters (high agreement) while label does not says the encoder sees the batch (stain,
scanner, site) more than the biology.

>>> stains = {"slide-1": {"stain": "HE"}, "slide-2": {"stain": "ER"}}
>>> sample = sample_embeddings("embeddings/", attributes=stains, max_points=2000)  # doctest: +SKIP
>>> points, explained = pca_2d(sample.features)                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medssl.cache import EmbeddingCache
from medssl.errors import CacheError

#: attrs of an embedding item that are bookkeeping, not something to colour a map by
BOOKKEEPING = ("status", "num_rows", "dim")


@dataclass(frozen=True)
class EmbeddingSample:
    """``features [N, D]`` of sampled rows, each row's ``items`` id and ``rows`` index in that item's
    array (the tile index of a slide), and ``attributes``: name → one value per row (None where an
    item has no such attribute)."""

    features: np.ndarray
    items: list[str]
    rows: np.ndarray
    attributes: dict[str, list]

    def table(self) -> dict[str, list]:
        """Columns ``item``, ``row`` and one per attribute (what ``pandas.DataFrame`` takes)."""
        return {"item": list(self.items), "row": self.rows.tolist(), **self.attributes}


def sample_embeddings(
    cache: EmbeddingCache | str | os.PathLike,
    item_ids: Sequence[str] | None = None,
    attributes: Mapping[str, Mapping[str, Any]] | None = None,
    max_points: int | None = None,
    seed: int = 0,
) -> EmbeddingSample:
    """Rows of ``item_ids`` (default: every complete item) from an embedding cache, at most ``max_points``
    of them drawn uniformly over all rows without replacement with ``seed`` (so big slides weigh more, as
    their tiles do), kept in item then row order. Each row carries its item's scalar attrs from the cache
    (label, split, ...) updated with ``attributes[item_id]`` (e.g. a cohort table's label, a manifest's stain)."""
    cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    stored = cache.items()
    ids = list(stored) if item_ids is None else list(item_ids)
    cache.require(ids, noun="item")
    counts = np.array([_row_count(cache, item_id, stored[item_id]) for item_id in ids], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise CacheError(f"{cache.path}: the {len(ids)} item(s) asked for hold no embedding rows")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    chosen = np.arange(total)
    if max_points is not None and total > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_points, replace=False))
    ends = np.cumsum(counts)
    cuts = np.concatenate([[0], np.searchsorted(chosen, ends)])  # chosen is sorted: each item's slice of it
    features, items, rows, per_item = [], [], [], []
    for index, item_id in enumerate(ids):
        local = chosen[cuts[index] : cuts[index + 1]] - (ends[index] - counts[index])
        if len(local) == 0:
            continue
        array = cache.features(item_id)
        read = array[:] if len(local) == counts[index] else array.get_orthogonal_selection((local, slice(None)))
        features.append(np.asarray(read, dtype=np.float32))
        items += [item_id] * len(local)
        rows.append(local)
        per_item.append((len(local), _item_attributes(stored[item_id], (attributes or {}).get(item_id, {}))))
    names = list(dict.fromkeys(name for _, attrs in per_item for name in attrs))
    columns = {name: [attrs.get(name) for n, attrs in per_item for _ in range(n)] for name in names}
    return EmbeddingSample(np.concatenate(features), items, np.concatenate(rows), columns)


def _row_count(cache: EmbeddingCache, item_id: str, attrs: Mapping[str, Any]) -> int:
    """Rows of one item: ``num_rows`` from its attrs (no array opened), else the array's length."""
    count = attrs.get("num_rows")
    return int(count) if isinstance(count, int) else int(cache.features(item_id).shape[0])


def _item_attributes(stored: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """An item's scalar attrs from the cache (not bookkeeping), updated with the caller's."""
    scalars = (str, int, float, bool, type(None))
    own = {k: v for k, v in stored.items() if k not in BOOKKEEPING and isinstance(v, scalars)}
    return own | dict(given)


def pca_2d(features: np.ndarray, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(points [N, components], explained [components])``: the rows of ``features`` projected on their
    top principal components (centred, SVD in float64) and each component's share of the variance. Each
    component's sign is fixed so its largest-magnitude loading is positive: the same map every run, and a
    map that does not flip between two encoders for no reason."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {x.shape}")
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(components, len(vt))
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    variance = singular**2
    points = np.zeros((len(x), components))
    explained = np.zeros(components)
    points[:, :k] = centred @ axes.T
    if variance.sum() > 0:
        explained[:k] = variance[:k] / variance.sum()
    return points, explained


def neighbour_agreement(features: np.ndarray, values: Sequence, k: int = 10, chunk: int = 1024) -> tuple[float, float]:
    """``(observed, chance)``: the mean fraction of each point's ``k`` nearest neighbours (cosine
    similarity, the point itself left out) whose value equals its own, and that fraction when values
    are shuffled (``sum n_c (n_c - 1) / (N (N - 1))``). Observed far above chance for stain or slide
    means the features cluster by it; for the label it is what a kNN probe builds on."""
    x = np.asarray(features, dtype=np.float64)
    labels = np.unique(np.asarray([str(v) for v in values]), return_inverse=True)[1]
    if x.ndim != 2 or len(x) != len(labels) or len(x) < 2:
        raise ValueError(f"features [N, D] with N >= 2 and one value per row; got {x.shape} and {len(labels)}")
    k = min(k, len(x) - 1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    agree = np.empty(len(x))
    for start in range(0, len(x), chunk):
        similarity = x[start : start + chunk] @ x.T
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        agree[start : start + chunk] = (labels[nearest] == labels[start : start + chunk, None]).mean(axis=1)
    sizes = np.bincount(labels).astype(np.float64)
    chance = float((sizes * (sizes - 1)).sum() / (len(x) * (len(x) - 1)))
    return float(agree.mean()), chance
