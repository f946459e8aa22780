"""``medssl export-h5``: a tile cache's coordinates, or a ``medssl embed`` output's features, as the
per-slide HDF5 files CLAM / TRIDENT pipelines read.

Layout of ``--out DIR``::

    coordinates (no --embeddings)     DIR/<slide_id>.h5           coords int64 [N, 2] (+ attrs)
    features (--embeddings EMB)       DIR/h5_files/<slide_id>.h5  features float32 [N, D], coords int64 [N, 2]
                                      DIR/pt_files/<slide_id>.pt  torch.save(float32 tensor [N, D])  (with --pt)
    both                              DIR/slides.csv              case_id, slide_id, label, split, stain

Row ``i`` is tile ``i`` of the cache: same order, same level-0 top-left corners. The attributes of
``coords`` (TRIDENT's or CLAM's meaning of ``patch_size``) come from
:func:`medssl.preprocess.patch_coords.coords_attrs`; docs/interop.md has the mapping. Every file is
written beside its final name and renamed into place, so a killed export leaves whole files only.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medssl.cache import EmbeddingCache, SlideCache
from medssl.errors import CacheError
from medssl.files import atomic_path, write_text_atomic
from medssl.preprocess.patch_coords import STYLES, coords_attrs, require_h5py

SLIDE_COLUMNS: tuple[str, ...] = ("case_id", "slide_id", "label", "split", "stain")


@dataclass
class H5Export:
    """What one export wrote."""

    out: Path
    files: list[Path] = field(default_factory=list)  #: one .h5 per slide (and one .pt with ``pt``)
    slides_csv: Path | None = None


def export_h5(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    embeddings: str | os.PathLike | None = None,
    style: str = "trident",
    pt: bool = False,
    slide_ids: Sequence[str] | None = None,
) -> H5Export:
    """Write CLAM/TRIDENT-style HDF5 files for the slides of the tile ``cache`` (all, or ``slide_ids``):
    coordinates only, or with ``embeddings`` (a ``medssl embed --out`` folder made from this cache)
    their features; ``pt`` adds CLAM's ``pt_files``. See the module docstring for the layout."""
    h5py = require_h5py()
    if style not in STYLES:
        raise CacheError(f"style must be one of {STYLES}, got {style!r}")
    tiles = SlideCache(cache)
    ids = list(slide_ids) if slide_ids is not None else tiles.ids
    for slide_id in ids:
        tiles.group(slide_id)  # a clear error for a slide the cache does not hold
    features = EmbeddingCache(embeddings).require(ids) if embeddings is not None else None
    out = Path(out)
    result = H5Export(out)
    for slide_id in ids:
        meta = tiles.metadata(slide_id)
        coords = tiles.coords(slide_id).astype(np.int64)
        attrs = coords_attrs(meta, style)
        if features is None:
            result.files.append(_write_h5(h5py, out / f"{slide_id}.h5", coords, attrs))
            continue
        values = _features(features, slide_id, coords, cache)
        encoder = features.params.get("encoder", {})
        feature_attrs = {"encoder": str(encoder.get("name", "")), "medssl_encoder": json.dumps(encoder)}
        target = out / "h5_files" / f"{slide_id}.h5"
        result.files.append(_write_h5(h5py, target, coords, attrs, values, feature_attrs))
        if pt:
            with atomic_path(out / "pt_files" / f"{slide_id}.pt") as temporary:
                torch.save(torch.from_numpy(values), temporary)
            result.files.append(out / "pt_files" / f"{slide_id}.pt")
    result.slides_csv = _write_slides_csv(out / "slides.csv", [tiles.metadata(i) for i in ids])
    return result


def _features(embeddings: EmbeddingCache, slide_id: str, coords: np.ndarray, cache) -> np.ndarray:
    """The slide's features as float32, refused when they were made from other tiles than the cache's."""
    stored = embeddings.coords(slide_id)
    if stored.shape != coords.shape or not np.array_equal(stored, coords):
        raise CacheError(
            f"{embeddings.path}: the embeddings of slide {slide_id!r} were made from other tiles than {cache} holds "
            "now; re-run medssl embed on this cache"
        )
    return np.asarray(embeddings.features(slide_id)[:], dtype=np.float32)


def _write_h5(h5py, path: Path, coords: np.ndarray, attrs: dict, features=None, feature_attrs=None) -> Path:
    with atomic_path(path) as temporary:
        with h5py.File(temporary, "w") as handle:
            if features is not None:
                dataset = handle.create_dataset("features", data=features)
                dataset.attrs.update(feature_attrs or {})
            dataset = handle.create_dataset("coords", data=coords)
            dataset.attrs.update(attrs)
    return path


def _write_slides_csv(path: Path, metas: list[dict]) -> Path:
    """CLAM's ``dataset_csv`` columns (case_id, slide_id, label) and medssl's split and stain; a slide
    without a case is its own case."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SLIDE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for meta in metas:
        row = {key: meta.get(key) or "" for key in SLIDE_COLUMNS}
        row["case_id"] = row["case_id"] or meta["slide_id"]
        writer.writerow(row)
    return write_text_atomic(path, text.getvalue())
