"""Instance scores drawn over the slide thumbnail: INS's instance probabilities or ABMIL's attention,
each tile filled with its score's colour, half transparent, with a colour bar."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medssl.viz.qc import save_png_atomically

#: blue → cyan → yellow → red, the ramp pathologists read as "cold → hot"
RAMP = np.array([[40, 60, 200], [40, 190, 220], [250, 220, 50], [215, 40, 30]], dtype=np.float64)


def colour(values: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 3]`` colours of values in [0, 1] along :data:`RAMP`."""
    position = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(RAMP) - 1)
    anchors = np.arange(len(RAMP))
    return np.stack([np.interp(position, anchors, RAMP[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def normalise(scores: np.ndarray, stretch: bool) -> tuple[np.ndarray, float, float]:
    """Values in [0, 1] to colour, and what their ends mean. Unstretched, probabilities are drawn as
    they are (0.5 looks the same on every slide); stretched, the slide's lowest score is blue and its
    highest red (attention, or probabilities that all sit far below 0.5)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not stretch:
        return np.clip(scores, 0, 1), 0.0, 1.0
    low, high = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 1.0)
    values = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
    return values, low, high


def heatmap_overlay(
    thumbnail: np.ndarray,
    boxes: np.ndarray,
    values: np.ndarray,
    alpha: float = 0.55,
    longest_side: int = 1200,
    title: str = "",
    low_label: str = "0",
    high_label: str = "1",
) -> Image.Image:
    """The thumbnail with each box ``[N, 4]`` (x0, y0, x1, y1, thumbnail pixels) filled by the colour of
    its value in [0, 1], and a colour bar underneath labelled ``title`` and its two ends."""
    h, w = thumbnail.shape[:2]
    zoom = longest_side / max(h, w)
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    base = (
        Image.fromarray(np.ascontiguousarray(thumbnail[..., :3])).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    )
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    fill = int(round(alpha * 255))
    for (x0, y0, x1, y1), rgb in zip(np.asarray(boxes, dtype=np.float64) * zoom, colour(values)):
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), fill=(*map(int, rgb), fill))
    picture = Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
    bar_height = 28
    canvas = Image.new("RGB", (size[0], size[1] + bar_height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    ramp = colour(np.linspace(0, 1, max(2, size[0] // 3)))[None].repeat(10, axis=0)
    canvas.paste(Image.fromarray(ramp), (8, size[1] + 4))
    ImageDraw.Draw(canvas).text(
        (16 + ramp.shape[1], size[1] + 2), f"{title}: {low_label} to {high_label}", fill=(0, 0, 0)
    )
    return canvas


def tile_boxes(meta: dict, coords: np.ndarray) -> np.ndarray:
    """Thumbnail-pixel boxes of tiles from their level-0 corners and the slide's cache metadata."""
    per_level0 = float(meta["mpp"]) / float(meta["thumbnail_mpp"])  # thumbnail pixels per level-0 pixel
    corners = np.asarray(coords, dtype=np.float64) * per_level0
    side = float(meta["tile_size_level0"]) * per_level0
    return np.concatenate([corners, corners + side], axis=1)


def write_heatmap(
    cache,
    slide_id: str,
    scores: np.ndarray,
    folder: str | os.PathLike,
    coords: np.ndarray | None = None,
    title: str = "score",
    stretch: bool = False,
) -> Path:
    """Draw ``scores`` (one per tile, in the cache's tile order unless ``coords`` are given) over the
    slide's thumbnail from ``cache`` (a :class:`~medssl.cache.SlideCache`) as
    ``folder/<slide_id>.png``. ``stretch`` spreads the colours between the slide's lowest and highest score."""
    meta = cache.metadata(slide_id)
    coords = cache.coords(slide_id) if coords is None else coords
    if len(coords) != len(scores):
        raise ValueError(f"{slide_id}: {len(scores)} scores for {len(coords)} tiles")
    values, low, high = normalise(scores, stretch)
    image = heatmap_overlay(
        cache.thumbnail(slide_id),
        tile_boxes(meta, coords),
        values,
        title=title,
        low_label=f"{low:.3g}",
        high_label=f"{high:.3g}",
    )
    return save_png_atomically(image, Path(folder) / f"{slide_id}.png")
