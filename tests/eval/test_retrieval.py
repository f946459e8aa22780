"""Similarity and retrieval of embeddings: cosine matrices, diagonal means and
top-k same-group retrieval (with its chance level) on cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medssl.eval.retrieval import (
    case_similarity,
    cosine_matrix,
    cross_stain_retrieval,
    same_group_retrieval,
    similarity_by_offset,
)


def test_cosine_matrix_is_every_pair_s_cosine_and_zero_for_a_zero_row():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    by_hand = [[x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for y in b] for x in a]
    np.testing.assert_allclose(cosine_matrix(a, b), by_hand)
    np.testing.assert_allclose(np.diagonal(cosine_matrix(a)), np.ones(5))
    a[2] = 0
    assert np.all(cosine_matrix(a, b)[2] == 0)
    with pytest.raises(ValueError, match="one width"):
        cosine_matrix(a, rng.normal(size=(3, 5)))


def test_similarity_by_offset_averages_each_diagonal_of_both_sides():
    matrix = np.array([[1.0, 0.8, 0.2], [0.6, 1.0, 0.4], [0.0, 0.4, 1.0]])
    # k = 0: 1; k = 1: upper (0.8 + 0.4) / 2 = 0.6, lower (0.6 + 0.4) / 2 = 0.5 → 0.55; k = 2: (0.2 + 0.0) / 2
    np.testing.assert_allclose(similarity_by_offset(matrix), [1.0, 0.55, 0.1])
    with pytest.raises(ValueError, match="square"):
        similarity_by_offset(np.ones((2, 3)))


def test_same_group_retrieval_by_hand():
    """Unit vectors at angles: queries 0° (a), 90° (b), 180° (c), 45° (d); gallery 10° (a), 80° (b),
    105° (c), 270° (a). Nearest gallery row of each query: 0° → 10° (a), 90° → 80° (b; 105° is 15° away),
    180° → 105° (c; 270° and 80° are 90° and 100° away): three top-1 hits; d has no row: skipped."""

    def at(degrees):
        radians = np.deg2rad(degrees)
        return np.stack([np.cos(radians), np.sin(radians)], axis=-1)

    queries, query_groups = at([0, 90, 180, 45]), ["a", "b", "c", "d"]
    gallery, gallery_groups = at([10, 80, 105, 270]), ["a", "b", "c", "a"]
    result = same_group_retrieval(queries, query_groups, gallery, gallery_groups, ks=(1, 2))
    assert (result["queries"], result["skipped"], result["gallery"]) == (3, 1, 4)
    assert result["top1"] == 1.0 and result["top2"] == 1.0
    # chance, n = 4: group a has m = 2 rows: top-1 1/2, top-2 1 − C(2,2)/C(4,2) = 5/6; b and c (m = 1):
    # top-1 1/4, top-2 1 − C(3,2)/C(4,2) = 1/2
    assert math.isclose(result["chance_top1"], (1 / 2 + 1 / 4 + 1 / 4) / 3)
    assert math.isclose(result["chance_top2"], (5 / 6 + 1 / 2 + 1 / 2) / 3)
    # a query at 170° (group a) among 10° a, 80° b, 105° c: 105° (65° away), 80° (90°), then 10° (160°):
    # its own row is third, a miss at k = 1 and 2, a hit at k = 3 (where chance is 1: every row is shown)
    miss = same_group_retrieval(at([170]), ["a"], gallery[:3], gallery_groups[:3], ks=(1, 2, 3))
    assert (miss["top1"], miss["top2"], miss["top3"], miss["chance_top3"]) == (0.0, 0.0, 1.0, 1.0)


def test_ties_go_to_the_earlier_gallery_row():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert same_group_retrieval(np.array([[1.0, 0.0]]), ["y"], gallery, ["x", "y"], ks=(1,))["top1"] == 0.0
    assert same_group_retrieval(np.array([[1.0, 0.0]]), ["x"], gallery, ["x", "y"], ks=(1,))["top1"] == 1.0


def test_same_group_retrieval_with_nothing_to_find_and_bad_lengths():
    result = same_group_retrieval(np.ones((2, 3)), ["a", "b"], np.ones((1, 3)), ["z"])
    assert result["queries"] == 0 and result["skipped"] == 2 and math.isnan(result["top1"])
    with pytest.raises(ValueError, match="one group per row"):
        same_group_retrieval(np.ones((2, 3)), ["a"], np.ones((1, 3)), ["z"])


def test_cross_stain_retrieval_scores_every_other_stain_against_the_reference():
    """Two cases; ER copies its case's H&E vector exactly (perfect), PR swaps them (always wrong)."""
    he = np.array([[1.0, 0.0], [0.0, 1.0]])
    vectors = np.concatenate([he, he, he[::-1]])
    stains = ["HE", "HE", "ER", "ER", "PR", "PR"]
    cases = ["c1", "c2", "c1", "c2", "c1", "c2"]
    rows = cross_stain_retrieval(vectors, stains, cases, ks=(1,))
    assert [r["stain"] for r in rows] == ["ER", "PR"]
    assert rows[0]["top1"] == 1.0 and rows[1]["top1"] == 0.0
    assert rows[0]["chance_top1"] == 0.5
    with pytest.raises(ValueError, match="reference stain"):
        cross_stain_retrieval(vectors, stains, cases, reference="HER2")


def test_case_similarity_puts_cases_on_both_axes_and_nan_where_a_stain_is_missing():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    stains, cases = ["HE", "HE", "ER"], ["c2", "c1", "c2"]  # c1 has no ER slide
    order, matrix = case_similarity(vectors, stains, cases, "HE", "ER")
    assert order == ["c1", "c2"]
    # rows: c1's H&E (0, 1), c2's H&E (1, 0); columns: c1 (none), c2's ER (1, 1)
    np.testing.assert_allclose(matrix, [[np.nan, 1 / math.sqrt(2)], [np.nan, 1 / math.sqrt(2)]])
