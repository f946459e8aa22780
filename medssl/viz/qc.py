"""Quality-control pictures: what a person looks at to trust a tiling run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medssl.files import atomic_path
from medssl.viz.volumes import orthogonal_views


def tile_overlay(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    boxes: np.ndarray,
    longest_side: int = 1600,
    region: np.ndarray | None = None,
    ink: np.ndarray | None = None,
    max_zoom: float = 8.0,
) -> Image.Image:
    """The thumbnail with the tissue outline in green, the outline of an annotated ``region`` (a mask
    like ``mask``) in orange, every kept tile as a blue box, and marker ink (``ink``, a mask like
    ``mask``) hatched in magenta: ink is excluded from tissue.

    ``boxes`` is ``[N, 4]`` (x0, y0, x1, y1) in thumbnail pixels. The picture is scaled so its
    longest side is ``longest_side`` pixels; small thumbnails are enlarged so boxes stay visible, but
    at most ``max_zoom`` times: a biopsy's 32-pixel thumbnail blown up to 1600 pixels shows nothing
    more and costs half a second of PNG encoding per slide.
    """
    h, w = mask.shape
    zoom = min(longest_side / max(h, w), max_zoom)
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    image = Image.fromarray(thumbnail).resize(size, Image.Resampling.BILINEAR)
    # cast: SciPy ships no type hints, and pyright's inference from its source gives float arrays
    for outlined, colour in ((mask, (0, 170, 0)), (region, (245, 130, 0))):
        if outlined is None:
            continue
        edge = outlined & ~cast(np.ndarray, ndimage.binary_erosion(outlined, border_value=0))
        edge_img = Image.fromarray((edge * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        image.paste(colour, mask=edge_img)
    if ink is not None and ink.any():
        ink_img = Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        rows, cols = np.indices((size[1], size[0]))
        hatch = Image.fromarray((((rows + cols) // 3) % 3 == 0).astype(np.uint8) * 255)  # diagonal stripes
        image.paste((230, 0, 200), mask=Image.fromarray(np.minimum(np.asarray(ink_img), np.asarray(hatch))))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64) * zoom:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(30, 60, 220), width=1)
    return image


def save_png_atomically(image: Image.Image, path: str | os.PathLike, compress_level: int = 1) -> Path:
    """Write a PNG through a temporary file so a killed run never leaves half a picture. zlib level 1
    (Pillow's default is 6) encodes about three times faster for files about 1.4 times larger: QC
    pictures are written for every item and looked at for few."""
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", compress_level=compress_level)
    return Path(path)


def volume_montage(
    image: np.ndarray, label: np.ndarray | None = None, spacing=(1.0, 1.0, 1.0), side: int = 384
) -> Image.Image:
    """Mid axial, coronal and sagittal slices of a ``[Z, Y, X]`` volume side by side, at their physical
    aspect (``spacing`` is x, y, z mm), with the label's outline in red; intensities stretched between
    the 1st and 99th percentiles (:func:`medssl.viz.volumes.orthogonal_views`, each view then scaled
    so its longest side is ``side`` pixels)."""
    sx, sy, sz = spacing
    views = orthogonal_views(image, (sz, sy, sx), {} if label is None else {"label": np.asarray(label) > 0})
    panels = []
    for rgb in views.values():
        zoom = side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * zoom)), max(1, round(rgb.shape[0] * zoom)))
        panels.append(Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST))
    canvas = Image.new("RGB", (sum(p.size[0] for p in panels) + 8 * (len(panels) - 1), side))
    offset = 0
    for panel in panels:
        canvas.paste(panel, (offset, 0))
        offset += panel.size[0] + 8
    return canvas
