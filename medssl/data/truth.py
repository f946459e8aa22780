"""Instance-level truth from lesion masks, for evaluation only (instance AUROC, heatmap checks).

A mask folder holds one greyscale PNG per slide, ``<slide_id>.png``, non-zero inside lesions, covering
the whole slide at any resolution (its size fixes the scale: ``mask width / slide width``), the form
CAMELYON16-style annotations take once rasterised. A tile is positive when at least ``min_fraction`` of
its footprint is lesion (0.25, the rule INS's authors used for CAMELYON16 patches). Negative slides
without a mask are all negative; positive slides without one have unknown truth (NaN).

MIL training never reads this: only :class:`~medssl.data.bags.BagPieceDataset` uses it, when it is
given one, for validation and test. :func:`write_tile_labels` turns the masks into tile-level labels for
supervised tile classification (fine-tuning, label efficiency).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medssl.cache import SlideCache
from medssl.errors import InputError
from medssl.eval.results import write_csv_atomic


class LesionMasks:
    def __init__(self, folder: str | os.PathLike, min_fraction: float = 0.25, negative_label: int = 0):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: no such mask folder")
        self.min_fraction, self.negative_label = min_fraction, negative_label
        self._cache: dict[str, np.ndarray | None] = {}

    def mask(self, slide_id: str) -> np.ndarray | None:
        """The slide's lesion mask as bool ``[h, w]``, or None when it has none."""
        if slide_id not in self._cache:
            path = self.folder / f"{slide_id}.png"
            if not path.exists():
                self._cache[slide_id] = None
            else:
                from PIL import Image

                try:
                    self._cache[slide_id] = np.asarray(Image.open(path).convert("L")) > 0
                except OSError as error:
                    raise InputError(f"{path}: not a readable PNG mask ({error})") from None
        return self._cache[slide_id]

    def instance_truth(self, meta: dict, coords: np.ndarray, bag_label: int) -> np.ndarray:
        """float32 ``[N]``: 1 for lesion tiles, 0 for others, NaN where unknown. ``meta`` is the slide's
        cache metadata (``slide_id``, ``dimensions``, ``tile_size_level0``), ``coords`` level-0 corners."""
        mask = self.mask(str(meta["slide_id"]))
        if mask is None:
            value = 0.0 if bag_label == self.negative_label else np.nan
            return np.full(len(coords), value, dtype=np.float32)
        fraction = lesion_fraction(mask, coords, float(meta["tile_size_level0"]), meta["dimensions"])
        return (fraction >= self.min_fraction).astype(np.float32)


def lesion_fraction(mask: np.ndarray, coords: np.ndarray, tile_level0: float, dimensions) -> np.ndarray:
    """Fraction of each tile's footprint (level-0 corner ``coords [N, 2]`` as (x, y), side ``tile_level0``)
    that the mask marks, by an integral image: O(1) per tile whatever its size."""
    width, height = (float(v) for v in dimensions)
    sx, sy = mask.shape[1] / width, mask.shape[0] / height
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0 = np.clip(np.floor(coords[:, 0] * sx), 0, mask.shape[1]).astype(np.int64)
    y0 = np.clip(np.floor(coords[:, 1] * sy), 0, mask.shape[0]).astype(np.int64)
    x1 = np.clip(np.ceil((coords[:, 0] + tile_level0) * sx), 0, mask.shape[1]).astype(np.int64)
    y1 = np.clip(np.ceil((coords[:, 1] + tile_level0) * sy), 0, mask.shape[0]).astype(np.int64)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return inside / area


def tile_label_rows(
    cache: SlideCache,
    masks: LesionMasks,
    positive: str = "lesion",
    negative: str = "normal",
    negative_slide_label: str | None = None,
) -> list[tuple[str, int, str]]:
    """``(slide_id, tile, label)`` for every tile whose truth the masks give: tile-level labels for
    tile classification from CAMELYON-style lesion annotations. Slides whose cache ``label`` is
    ``negative_slide_label`` count as all negative without a mask; other slides without a mask are left out
    (their truth is unknown)."""
    rows = []
    for slide_id in cache.ids:
        meta = cache.metadata(slide_id)
        is_negative = negative_slide_label is not None and str(meta.get("label")) == negative_slide_label
        truth = masks.instance_truth(meta, cache.coords(slide_id), 0 if is_negative else 1)
        rows.extend(
            (slide_id, tile, positive if value else negative) for tile, value in enumerate(truth) if value == value
        )
    return rows


def write_tile_labels(cache: str | os.PathLike, masks: str | os.PathLike, out: str | os.PathLike, **options) -> Path:
    """:func:`tile_label_rows` as a CSV (``slide_id,tile,label``), written atomically."""
    rows = tile_label_rows(SlideCache(cache), LesionMasks(masks), **options)
    return write_csv_atomic(out, ["slide_id", "tile", "label"], rows)
