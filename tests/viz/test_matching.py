"""Embedding stores read for matching and retrieval pictures: dense maps as tensors with their strides
(and anisotropic strides refused), slide vectors as stored rows or mean-pooled patch features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from medssl.cache import EmbeddingCache
from medssl.errors import CacheError
from medssl.viz.matching import dense_levels, slide_vectors
from tests.dense_store import write_dense_store


def _maps(fine_stride, fine_grid) -> dict:
    """A volume of 8 × 12 × 16 voxels with a fine map at ``fine_stride`` and a coarse one at stride 8."""
    rng = np.random.default_rng(0)
    return {
        "shape": [8, 12, 16],
        "fine": rng.normal(size=(3, *fine_grid)),
        "coarse": rng.normal(size=(2, 1, 2, 2)),
        "fine_stride": fine_stride,
        "coarse_stride": 8,
    }


def test_dense_levels_are_the_stored_maps_as_float_tensors_with_one_stride_each(tmp_path):
    maps = _maps(4, (2, 3, 4))
    store = EmbeddingCache(write_dense_store(tmp_path / "dense", {"v": maps}, normalisation="none"))
    tensors, strides = dense_levels(store, "v")
    assert strides == {"coarse": 8, "fine": 4}
    assert tensors["fine"].dtype == torch.float32 and tensors["fine"].shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(tensors["coarse"].numpy(), maps["coarse"].astype(np.float16))


def test_dense_levels_refuse_a_stride_that_differs_between_axes(tmp_path):
    store = EmbeddingCache(write_dense_store(tmp_path / "dense", {"v": _maps([8, 4, 4], (1, 3, 4))}))
    with pytest.raises(CacheError, match=r"v/fine: stride \[8, 4, 4\] differs between axes"):
        dense_levels(store, "v")


def test_slide_vectors_mean_pool_each_slides_rows_and_name_missing_slides(tmp_path):
    path = write_dense_store(tmp_path / "slides", {})  # an embedding store with no items yet
    group = zarr.open_group(path / "cache.zarr" / "embeddings", mode="r+")
    rows = {"s1": np.array([[1.0, 2.0], [3.0, 6.0]]), "s2": np.array([[5.0, -1.0]])}  # patch features; a slide row
    for slide_id, data in rows.items():
        item = group.create_group(slide_id)
        item.attrs.update({"status": "complete"})
        item.create_array("features", shape=data.shape, dtype="float32")[:] = data
    store = EmbeddingCache(path)
    np.testing.assert_allclose(slide_vectors(store, ["s2", "s1"]), [[5.0, -1.0], [2.0, 4.0]])
    with pytest.raises(CacheError, match=r"no embeddings for 1 slide\(s\) \(s3\)"):
        slide_vectors(store, ["s1", "s3"])
