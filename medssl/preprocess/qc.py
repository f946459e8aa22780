"""Quality-control pictures: what a person looks at to trust a tiling run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage


def tile_overlay(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    boxes: np.ndarray,
    longest_side: int = 1600,
) -> Image.Image:
    """The thumbnail with the tissue outline in green and every kept tile as a blue box.

    ``boxes`` is ``[N, 4]`` (x0, y0, x1, y1) in thumbnail pixels. The picture is scaled so its
    longest side is ``longest_side`` pixels (small thumbnails are enlarged so boxes stay visible).
    """
    h, w = mask.shape
    zoom = longest_side / max(h, w)
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    image = Image.fromarray(thumbnail).resize(size, Image.Resampling.BILINEAR)
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    edge_img = Image.fromarray((edge * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    image.paste((0, 170, 0), mask=edge_img)
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64) * zoom:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(30, 60, 220), width=1)
    return image


def save_png_atomically(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG through a temporary file so a killed run never leaves half a picture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
