"""Embedding stores read into the arrays that matching and retrieval pictures need: a volume's dense maps
(``medssl embed --dense``) as the tensors :mod:`medssl.eval.landmarks` matches, and one vector per slide
from a slide-embedding store (``medssl embed-slides``) or from patch features (``medssl embed``, mean
pooled: the no-learning baseline of a slide encoder), for :mod:`medssl.eval.retrieval`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medssl.cache import EmbeddingCache
from medssl.errors import CacheError


def dense_levels(store: EmbeddingCache, volume_id: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``(maps, strides)`` of one volume's dense embedding: each level's map as a float32 tensor
    ``[C, d, h, w]`` and its stride, the arguments of :func:`medssl.eval.landmarks.match_landmarks`. A level
    whose stride differs between axes is refused (the landmark functions take one stride per level)."""
    maps, strides = {}, {}
    for level, dense in store.dense(volume_id).items():
        if len(set(dense.stride)) != 1:
            raise CacheError(
                f"{store.path}/embeddings/{volume_id}/{level}: stride {list(dense.stride)} differs between axes; "
                "landmark matching here takes one stride per level"
            )
        maps[level] = torch.from_numpy(np.asarray(dense.array[:], dtype=np.float32))
        strides[level] = int(dense.stride[0])
    return maps, strides


def slide_vectors(store: EmbeddingCache, slide_ids: Sequence[str]) -> np.ndarray:
    """``float32 [n, D]``: one row per slide of ``slide_ids``, the mean of its stored rows: its slide
    embedding in a ``medssl embed-slides`` store (one row each), the mean of its patch features in a
    ``medssl embed`` store (mean pooling). Slides without embeddings are refused, named."""
    store.require(list(slide_ids))
    rows = []
    for slide_id in slide_ids:
        features = np.asarray(store.features(slide_id)[:], dtype=np.float32)
        if len(features) == 0:
            raise CacheError(f"{store.path}: slide {slide_id!r} has no rows to pool")
        rows.append(features.mean(axis=0))
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
