"""Embedding maps: PCA against scikit-learn's up to sign (and a sign that does not depend on row order),
sampling that is deterministic and reads the right rows with their item's attributes, and neighbour
agreement against a brute-force kNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from medssl.cache import EmbeddingCache
from medssl.cache.store import commit_item, open_for_writing, staged_item, write_small_arrays
from medssl.errors import CacheError
from medssl.viz.embedding_map import neighbour_agreement, pca_2d, sample_embeddings

#: item id → (rows, label); feature row r of item k is [k, r, k * 1000 + r]: each row names itself
ITEMS = {"slide-a": (5, "lesion"), "slide-b": (40, "clean"), "slide-c": (12, "lesion")}


@pytest.fixture
def embeddings(tmp_path: Path) -> Path:
    """A small embedding cache written with the cache's own write protocol, as ``medssl embed`` does."""
    root = open_for_writing(tmp_path / "embeddings", "embeddings", {"encoder": "test"})
    for k, (item_id, (count, label)) in enumerate(ITEMS.items()):
        rows = np.arange(count, dtype=np.float32)
        features = np.stack([np.full(count, k, np.float32), rows, k * 1000 + rows], axis=1)
        with staged_item(root, "embeddings", item_id) as group:
            write_small_arrays(group, {"features": features})
        attrs = {"num_rows": count, "dim": 3, "label": label, "split": "train", "source": {"path": "x"}}
        commit_item(root, "embeddings", item_id, attrs)
    return tmp_path / "embeddings"


def test_pca_matches_scikit_learn_up_to_sign_and_its_sign_is_fixed(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16)) + 5.0
    points, explained = pca_2d(features)
    reference = PCA(n_components=2).fit(features)
    expected = reference.transform(features)
    for c in range(2):
        sign = np.sign(points[:, c] @ expected[:, c])
        np.testing.assert_allclose(points[:, c], sign * expected[:, c], atol=1e-8)
    np.testing.assert_allclose(explained, reference.explained_variance_ratio_, rtol=1e-10)
    order = rng.permutation(len(features))  # another row order: the same points, not a mirrored map
    np.testing.assert_allclose(pca_2d(features[order])[0], points[order], atol=1e-8)
    axes = np.linalg.lstsq(features - features.mean(0), points, rcond=None)[0].T  # the loadings used
    assert all(axis[np.abs(axis).argmax()] > 0 for axis in axes)


def test_pca_of_fewer_dimensions_than_components_pads_with_zeros():
    points, explained = pca_2d(np.array([[1.0], [3.0], [5.0]]))
    np.testing.assert_allclose(points, [[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(explained, [1.0, 0.0])
    with pytest.raises(ValueError, match=r"N >= 2, got shape \(1, 3\)"):
        pca_2d(np.ones((1, 3)))


def test_every_row_in_item_then_row_order_with_its_item_attributes(embeddings):
    sample = sample_embeddings(embeddings, attributes={"slide-b": {"stain": "HE", "label": "normal"}})
    assert sample.features.shape == (57, 3) and sample.features.dtype == np.float32
    assert sample.items == ["slide-a"] * 5 + ["slide-b"] * 40 + ["slide-c"] * 12
    np.testing.assert_array_equal(sample.rows, np.concatenate([np.arange(5), np.arange(40), np.arange(12)]))
    np.testing.assert_array_equal(sample.features[:, 1], sample.rows)  # each row read is the row named
    assert sample.attributes["label"] == ["lesion"] * 5 + ["normal"] * 40 + ["lesion"] * 12  # given wins
    assert sample.attributes["stain"] == [None] * 5 + ["HE"] * 40 + [None] * 12
    assert set(sample.attributes) == {"label", "split", "stain"}  # no bookkeeping, no nested attrs
    assert list(sample.table()) == ["item", "row", "label", "split", "stain"]


def test_subsampling_is_deterministic_uniform_over_rows_and_reads_the_rows_it_names(embeddings):
    first = sample_embeddings(EmbeddingCache(embeddings), max_points=20, seed=3)
    again = sample_embeddings(embeddings, max_points=20, seed=3)
    other = sample_embeddings(embeddings, max_points=20, seed=4)
    assert len(first.items) == 20 and first.items == again.items
    np.testing.assert_array_equal(first.rows, again.rows)
    np.testing.assert_array_equal(first.features, again.features)
    assert (first.items, first.rows.tolist()) != (other.items, other.rows.tolist())
    index = {item_id: k for k, item_id in enumerate(ITEMS)}
    codes = [index[i] * 1000 + r for i, r in zip(first.items, first.rows)]
    np.testing.assert_array_equal(first.features[:, 2], codes)  # the right rows of the right items
    assert codes == sorted(set(codes))  # item then row order, no repeats
    expected = sorted(np.random.default_rng(3).choice(57, size=20, replace=False))  # uniform over all rows
    offsets = {"slide-a": 0, "slide-b": 5, "slide-c": 45}
    assert [offsets[i] + r for i, r in zip(first.items, first.rows)] == expected
    subset = sample_embeddings(embeddings, item_ids=["slide-c"], max_points=100)
    assert subset.items == ["slide-c"] * 12  # fewer rows than max_points: all of them


def test_unknown_items_and_bad_limits_are_refused(embeddings):
    with pytest.raises(CacheError, match="no embeddings for 1 item.*slide-z"):
        sample_embeddings(embeddings, item_ids=["slide-a", "slide-z"])
    with pytest.raises(ValueError, match="max_points must be at least 1"):
        sample_embeddings(embeddings, max_points=0)


def test_neighbour_agreement_matches_brute_force_knn_and_the_chance_formula():
    rng = np.random.default_rng(1)
    values = rng.choice(["HE", "ER", "PR"], size=150, p=[0.5, 0.3, 0.2])
    one_hot = values[:, None] == np.array(["HE", "ER", "PR"])
    features = rng.normal(size=(150, 8)) + 1.5 * np.pad(one_hot, ((0, 0), (0, 5)))  # a shift per value
    observed, chance = neighbour_agreement(features, values, k=7, chunk=64)
    neighbours = NearestNeighbors(n_neighbors=8, metric="cosine").fit(features).kneighbors(features)[1][:, 1:]
    assert observed == pytest.approx((values[neighbours] == values[:, None]).mean())
    sizes = np.unique(values, return_counts=True)[1]
    assert chance == pytest.approx(sum(n * (n - 1) for n in sizes) / (150 * 149))
    assert observed > chance + 0.2  # the features were made to cluster by value
    assert neighbour_agreement(features, rng.permutation(values), k=7)[0] == pytest.approx(chance, abs=0.08)
