"""Similarity and retrieval between embeddings, label-free: cosine matrices, how similarity falls off along
an ordered axis (the slices of a volume), and same-group retrieval (is a slide's nearest neighbour among
another stain's slides the same patient's slide?) beside the accuracy a random ranking would give.

MADELEINE (Jaume et al. 2024) aligns a case's H&E slide embedding with its IHC slides' embeddings, so
cross-stain retrieval of held-out cases is the direct test of what it learned; a joint 2D/3D volume
encoder should give neighbouring axial slices similar tokens. Plain NumPy: the inputs are small matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``[n, m]`` float64: the cosine similarity of every row of ``a`` ``[n, d]`` with every row of ``b``
    ``[m, d]`` (default ``a``: the self-similarity matrix). A zero row has similarity 0 with everything."""
    a = np.asarray(a, dtype=np.float64)
    b = a if b is None else np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_matrix needs two [n, d] matrices of one width, got {a.shape} and {b.shape}")

    def unit(x: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    return unit(a) @ unit(b).T


def similarity_by_offset(matrix: np.ndarray) -> np.ndarray:
    """``[n]``: the mean of the ``k``-th diagonal of a square similarity matrix ``[n, n]`` for ``k = 0 ..
    n − 1`` (both sides: entries ``(i, i ± k)``): how similarity falls with distance along an ordered axis
    (slices ``k`` apart). Entry 0 is the mean self-similarity."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"similarity_by_offset needs a square matrix, got {matrix.shape}")
    n = len(matrix)
    return np.array([(np.diagonal(matrix, k).mean() + np.diagonal(matrix, -k).mean()) / 2 for k in range(n)])


def same_group_retrieval(
    queries: np.ndarray,
    query_groups: Sequence[str],
    gallery: np.ndarray,
    gallery_groups: Sequence[str],
    ks: Sequence[int] = (1, 3),
) -> dict[str, float]:
    """Top-``k`` retrieval of each query's own group (e.g. case) among the ``gallery`` rows, by cosine
    similarity (ties broken by gallery order).

    Returns ``queries`` (the number scored), ``skipped`` (queries whose group has no gallery row: nothing
    to find, left out), ``gallery`` (rows), and per ``k``: ``top<k>``, the share of scored queries with a
    row of their group among their ``k`` most similar, and ``chance_top<k>``, the share a random ranking
    gives on average (``1 − C(n − m, k) / C(n, k)`` for ``m`` rows of the query's group among ``n``).
    NaN where no query is scored."""
    queries, gallery = np.asarray(queries), np.asarray(gallery)
    if len(queries) != len(query_groups) or len(gallery) != len(gallery_groups):
        raise ValueError(
            f"{len(queries)} queries with {len(query_groups)} groups, {len(gallery)} gallery rows with "
            f"{len(gallery_groups)} groups: one group per row"
        )
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    groups = np.asarray(gallery_groups, dtype=object)
    hits: dict[int, list[float]] = {k: [] for k in ks}
    chance: dict[int, list[float]] = {k: [] for k in ks}
    similarity = cosine_matrix(queries, gallery) if len(queries) and len(gallery) else np.zeros((len(queries), 0))
    skipped = 0
    n = len(gallery)
    for row, group in zip(similarity, query_groups, strict=True):
        relevant = np.asarray(groups == group, dtype=bool)
        m = int(relevant.sum())
        if m == 0:
            skipped += 1
            continue
        order = np.argsort(-row, kind="stable")
        first = int(np.flatnonzero(relevant[order])[0])  # 0-based rank of the best row of the group
        for k in ks:
            hits[k].append(float(first < k))
            chance[k].append(1.0 - comb(n - m, k) / comb(n, k) if k < n else 1.0)
    scored = len(query_groups) - skipped
    result: dict[str, float] = {"queries": float(scored), "skipped": float(skipped), "gallery": float(n)}
    for k in ks:
        result[f"top{k}"] = float(np.mean(hits[k])) if scored else float("nan")
        result[f"chance_top{k}"] = float(np.mean(chance[k])) if scored else float("nan")
    return result


def cross_stain_retrieval(
    vectors: np.ndarray,
    stains: Sequence[str],
    cases: Sequence[str],
    reference: str = "HE",
    ks: Sequence[int] = (1, 3),
) -> list[dict]:
    """Per other stain (in order of first appearance): :func:`same_group_retrieval` of the ``reference``
    stain's slides (queries) among that stain's slides (gallery), the group being the case. ``vectors``
    ``[n, d]`` are one per slide, with its stain and case. Each row: ``{"stain": ..., **metrics}``."""
    vectors = np.asarray(vectors)
    if not len(vectors) == len(stains) == len(cases):
        raise ValueError(f"{len(vectors)} vectors, {len(stains)} stains, {len(cases)} cases: one of each per slide")
    stains_arr, cases_arr = np.asarray(stains, dtype=object), np.asarray(cases, dtype=object)
    is_query = stains_arr == reference
    if not is_query.any():
        raise ValueError(f"no slide has the reference stain {reference!r} (stains: {sorted(set(stains))})")
    rows = []
    for stain in dict.fromkeys(s for s in stains if s != reference):
        in_gallery = stains_arr == stain
        metrics = same_group_retrieval(
            vectors[is_query], list(cases_arr[is_query]), vectors[in_gallery], list(cases_arr[in_gallery]), ks
        )
        rows.append({"stain": stain, **metrics})
    return rows


def case_similarity(
    vectors: np.ndarray,
    stains: Sequence[str],
    cases: Sequence[str],
    row_stain: str,
    column_stain: str,
) -> tuple[list[str], np.ndarray]:
    """``(case ids, [c, c] matrix)``: cosine similarity of each case's ``row_stain`` slide (rows) with each
    case's ``column_stain`` slide (columns), over the sorted cases that have either; NaN where a case lacks
    that stain. The diagonal is "same case": a bright diagonal is cross-stain alignment. (A case with two
    slides of one stain keeps its last.)"""
    vectors = np.asarray(vectors)
    if not len(vectors) == len(stains) == len(cases):
        raise ValueError(f"{len(vectors)} vectors, {len(stains)} stains, {len(cases)} cases: one of each per slide")
    rows = {c: i for i, (s, c) in enumerate(zip(stains, cases, strict=True)) if s == row_stain}
    columns = {c: i for i, (s, c) in enumerate(zip(stains, cases, strict=True)) if s == column_stain}
    order = sorted(set(rows) | set(columns))
    matrix = np.full((len(order), len(order)), np.nan)
    r = [i for i, c in enumerate(order) if c in rows]
    k = [j for j, c in enumerate(order) if c in columns]
    if r and k:
        block = cosine_matrix(vectors[[rows[order[i]] for i in r]], vectors[[columns[order[j]] for j in k]])
        matrix[np.ix_(r, k)] = block
    return order, matrix
