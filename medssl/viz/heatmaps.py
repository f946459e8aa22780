"""Instance scores drawn over the slide thumbnail: INS's instance probabilities or ABMIL's attention,
each tile filled with its score's colour, half transparent, with a colour bar, and optionally the
outline of the slide's lesion mask, resampled exactly onto the picture's grid
(:func:`mask_on_thumbnail`), so the map can be judged against the truth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medssl.viz.qc import save_png_atomically

#: blue → cyan → yellow → red, the ramp pathologists read as "cold → hot"
RAMP = np.array([[40, 60, 200], [40, 190, 220], [250, 220, 50], [215, 40, 30]], dtype=np.float64)
#: the lesion outline: black reads against every colour of the ramp and against pale stained tissue
OUTLINE = (0, 0, 0)


def colour(values: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 3]`` colours of values in [0, 1] along :data:`RAMP`."""
    position = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(RAMP) - 1)
    anchors = np.arange(len(RAMP))
    return np.stack([np.interp(position, anchors, RAMP[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def normalise(scores: np.ndarray, stretch: bool) -> tuple[np.ndarray, float, float]:
    """Values in [0, 1] to colour, and what their ends mean. Unstretched, probabilities are drawn as
    they are (0.5 looks the same on every slide); stretched, the slide's lowest score is blue and its
    highest red (attention, or probabilities that all sit far below 0.5). NaN (unscored) stays NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    if not stretch:
        return np.clip(scores, 0, 1), 0.0, 1.0
    scored = scores[~np.isnan(scores)]
    low, high = (float(scored.min()), float(scored.max())) if scored.size else (0.0, 1.0)
    values = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
    return values, low, high


def overlay_size(shape: tuple[int, ...], longest_side: int) -> tuple[int, int]:
    """(width, height) of a picture of a thumbnail of ``shape`` (h, w, ...) whose longest side is
    ``longest_side``: the grid :func:`heatmap_overlay` draws on."""
    h, w = shape[:2]
    zoom = longest_side / max(h, w)
    return max(1, round(w * zoom)), max(1, round(h * zoom))


def heatmap_overlay(
    thumbnail: np.ndarray,
    boxes: np.ndarray,
    values: np.ndarray,
    alpha: float = 0.55,
    longest_side: int = 1200,
    title: str = "",
    low_label: str = "0",
    high_label: str = "1",
    outline: np.ndarray | None = None,
    outline_width: int = 2,
) -> Image.Image:
    """The thumbnail with each box ``[N, 4]`` (x0, y0, x1, y1, thumbnail pixels) filled by the colour of
    its value in [0, 1] (none for NaN), and a colour bar underneath labelled ``title`` and its two ends.
    ``outline``: a bool mask over the thumbnail's extent, best on the picture's own grid
    (:func:`overlay_size`; another grid is resized to it, nearest); its edge is drawn ``outline_width``
    pixels wide on top, in :data:`OUTLINE`."""
    h, w = thumbnail.shape[:2]
    zoom = longest_side / max(h, w)
    size = overlay_size(thumbnail.shape, longest_side)
    base = (
        Image.fromarray(np.ascontiguousarray(thumbnail[..., :3])).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    )
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    fill = int(round(alpha * 255))
    values = np.asarray(values, dtype=np.float64)
    scored = ~np.isnan(values)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[scored] * zoom
    for (x0, y0, x1, y1), rgb in zip(boxes, colour(values[scored])):
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), fill=(*map(int, rgb), fill))
    picture = Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
    if outline is not None:
        picture.paste(OUTLINE, mask=Image.fromarray(edge(outline, size, outline_width)))
    bar_height = 28
    canvas = Image.new("RGB", (size[0], size[1] + bar_height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    ramp = colour(np.linspace(0, 1, max(2, size[0] // 3)))[None].repeat(10, axis=0)
    if len(values):
        canvas.paste(Image.fromarray(ramp), (8, size[1] + 4))
        ImageDraw.Draw(canvas).text(
            (16 + ramp.shape[1], size[1] + 2), f"{title}: {low_label} to {high_label}", fill=(0, 0, 0)
        )
    else:
        ImageDraw.Draw(canvas).text((8, size[1] + 2), title, fill=(0, 0, 0))
    return canvas


def edge(mask: np.ndarray, size: tuple[int, int], width: int = 2) -> np.ndarray:
    """uint8 ``[h, w]`` (255 on the edge) of the inside pixels of a bool ``mask`` within ``width`` pixels
    of the outside, on a ``size`` (w, h) grid (the mask resized to it, nearest, if it is on another)."""
    inside = np.asarray(mask, dtype=bool)
    if inside.shape != (size[1], size[0]):
        inside = np.asarray(Image.fromarray(inside).resize(size, Image.Resampling.NEAREST))
    core = ndimage.binary_erosion(inside, iterations=max(1, width), border_value=0)
    return ((inside & ~np.asarray(core, dtype=bool)) * 255).astype(np.uint8)


def mask_on_thumbnail(
    mask: np.ndarray, meta: dict, thumbnail_shape: tuple[int, ...], shape: tuple[int, int] | None = None
) -> np.ndarray:
    """float64 ``[h, w]``: the share of each pixel of the slide's thumbnail (or of a ``shape`` (h, w) grid
    over the thumbnail's extent: a zoomed picture of it) that ``mask`` covers, exactly.

    ``mask`` (bool or 0/1 ``[mh, mw]``) covers the whole slide (``meta["dimensions"]``, level-0) at any
    resolution (a lesion mask: ``mw / width`` mask pixels per level-0 pixel); the thumbnail has
    ``meta["thumbnail_mpp"] / meta["mpp"]`` level-0 pixels per pixel, as :func:`tile_boxes` places tiles.
    Areas come from the mask's integral image, which is bilinear between its grid points, so a pixel
    straddling mask pixels gets their exact area-weighted share, whatever the two scales."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"a mask must be a non-empty 2-D array, got shape {mask.shape}")
    width, height = (float(v) for v in meta["dimensions"])
    level0 = float(meta["thumbnail_mpp"]) / float(meta["mpp"])  # level-0 pixels per thumbnail pixel
    th, tw = thumbnail_shape[:2]
    h, w = (th, tw) if shape is None else shape
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    integral[1:, 1:] = (mask != 0).cumsum(0).cumsum(1)
    # pixel edges in mask pixels: target pixel → level-0 → mask
    xs = np.arange(w + 1) * (tw * level0 / w) * (mask.shape[1] / width)
    ys = np.arange(h + 1) * (th * level0 / h) * (mask.shape[0] / height)
    columns = _interpolate(integral, xs, axis=1)
    corners = _interpolate(columns, ys, axis=0)
    inside = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    return inside / ((xs[1] - xs[0]) * (ys[1] - ys[0]))


def _interpolate(table: np.ndarray, at: np.ndarray, axis: int) -> np.ndarray:
    """``table`` linearly interpolated at positions ``at`` along ``axis`` (clamped to its ends)."""
    last = table.shape[axis] - 1
    at = np.clip(at, 0, last)
    low = np.minimum(np.floor(at).astype(np.int64), max(last - 1, 0))
    high = np.minimum(low + 1, last)
    share = at - low
    if axis == 1:
        return table[:, low] * (1 - share) + table[:, high] * share
    return table[low] * (1 - share)[:, None] + table[high] * share[:, None]


def tile_boxes(meta: dict, coords: np.ndarray) -> np.ndarray:
    """Thumbnail-pixel boxes of tiles from their level-0 corners and the slide's cache metadata."""
    per_level0 = float(meta["mpp"]) / float(meta["thumbnail_mpp"])  # thumbnail pixels per level-0 pixel
    corners = np.asarray(coords, dtype=np.float64) * per_level0
    side = float(meta["tile_size_level0"]) * per_level0
    return np.concatenate([corners, corners + side], axis=1)


def slide_heatmap(
    cache,
    slide_id: str,
    scores: np.ndarray | None,
    coords: np.ndarray | None = None,
    title: str = "score",
    stretch: bool = False,
    mask: np.ndarray | None = None,
    longest_side: int = 1200,
) -> Image.Image:
    """``scores`` (one per tile, in the cache's tile order unless ``coords`` are given; NaN: not drawn;
    None: the bare thumbnail) over the slide's thumbnail from ``cache`` (a
    :class:`~medssl.cache.SlideCache`), with the outline of the slide's lesion ``mask`` (any resolution,
    covering the slide; see :func:`mask_on_thumbnail`). ``stretch`` as in :func:`normalise`."""
    meta, thumbnail = cache.metadata(slide_id), cache.thumbnail(slide_id)
    if scores is None:
        boxes, values, low, high = np.zeros((0, 4)), np.zeros(0), 0.0, 1.0
    else:
        coords = cache.coords(slide_id) if coords is None else coords
        if len(coords) != len(scores):
            raise ValueError(f"{slide_id}: {len(scores)} scores for {len(coords)} tiles")
        boxes = tile_boxes(meta, coords)
        values, low, high = normalise(scores, stretch)
    outline = None
    if mask is not None:
        w, h = overlay_size(thumbnail.shape, longest_side)
        outline = mask_on_thumbnail(mask, meta, thumbnail.shape, (h, w)) >= 0.5
    return heatmap_overlay(
        thumbnail,
        boxes,
        values,
        longest_side=longest_side,
        title=title,
        low_label=f"{low:.3g}",
        high_label=f"{high:.3g}",
        outline=outline,
    )


def write_heatmap(
    cache,
    slide_id: str,
    scores: np.ndarray,
    folder: str | os.PathLike,
    coords: np.ndarray | None = None,
    title: str = "score",
    stretch: bool = False,
) -> Path:
    """:func:`slide_heatmap` of ``scores`` (one per tile, in the cache's tile order unless ``coords``
    are given) saved as ``folder/<slide_id>.png``."""
    image = slide_heatmap(cache, slide_id, scores, coords=coords, title=title, stretch=stretch)
    return save_png_atomically(image, Path(folder) / f"{slide_id}.png")
