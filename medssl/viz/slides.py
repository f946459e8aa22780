"""Looking at a tile cache: one table of the slides (what the last run did to each, at what resolution),
the per-tile tissue fractions as columns, random tiles as a mosaic, and a scale bar in µm.

Array in, array out: these return NumPy arrays, lists and dicts (notebooks turn them into pandas tables
and matplotlib figures; medssl itself draws with Pillow only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medssl.cache import SlideCache, read_manifests
from medssl.errors import CacheError

#: the columns of :func:`slide_table`, in order
SLIDE_COLUMNS = (
    "id",
    "status",
    "reason",
    "tiles",
    "label",
    "split",
    "stain",
    "source_mpp",
    "mpp_source",
    "tile_mpp",
    "tile_px",
    "tile_um",
    "read_level",
    "scale",
    "tissue_fraction_slide",
    "in_cache",
    "path",
)


def tile_scale(metadata: Mapping, where: str = "slide") -> dict[str, float]:
    """The physical size of one cached tile, from what the cache stored about its slide.

    A tile is ``tile_size`` pixels a side and covers ``tile_size_level0`` pixels of the slide's level 0,
    each ``mpp`` µm: so one tile pixel is ``tile_size_level0 · mpp / tile_size`` µm (the requested
    ``target_mpp``, by construction) and the tile is ``tile_size_level0 · mpp`` µm a side. Returns
    ``tile_px``, ``um_per_px``, ``tile_um``, ``level0_px`` (the tile's side in level-0 pixels),
    ``level0_mpp`` and ``target_mpp``. ``where`` names the slide in errors.
    """
    try:
        tile_px = int(metadata["tile_size"])
        level0_px = float(metadata["tile_size_level0"])
        level0_mpp = float(metadata["mpp"])
        target_mpp = float(metadata["target_mpp"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(
            f"{where}: attrs lack the tile's resolution ({exc!r}); the cache is damaged or not a slide cache"
        ) from None
    if tile_px <= 0 or level0_px <= 0 or level0_mpp <= 0:
        raise CacheError(f"{where}: tile_size {tile_px}, tile_size_level0 {level0_px}, mpp {level0_mpp} must be > 0")
    tile_um = level0_px * level0_mpp
    return {
        "tile_px": tile_px,
        "um_per_px": tile_um / tile_px,
        "tile_um": tile_um,
        "level0_px": level0_px,
        "level0_mpp": level0_mpp,
        "target_mpp": target_mpp,
    }


def slide_table(cache: SlideCache | str | os.PathLike) -> list[dict]:
    """One row per slide (columns :data:`SLIDE_COLUMNS`): the last run's status and reason from the
    folder's manifest(s), joined with what the cache holds for it.

    ``source_mpp`` is the slide's level-0 resolution (the manifest's ``mpp``); ``tile_mpp`` is the
    resolution of the cached tiles (:func:`tile_scale`) — not the same number when tiles were
    downsampled. A slide that failed has no cache entry unless an earlier run cached it (``in_cache``
    tells); a cached slide that no manifest lists (an earlier run's, another shard's) gets status
    ``cached``. Filter ``status == "failed"`` for the slides to fix and why.
    """
    cache = cache if isinstance(cache, SlideCache) else SlideCache(cache)
    items = cache.items()
    rows = read_manifests(cache.path.parent)
    table = []
    for slide_id in list(rows) + [i for i in items if i not in rows]:
        row, attrs = rows.get(slide_id, {}), items.get(slide_id)
        entry: dict = dict.fromkeys(SLIDE_COLUMNS)
        entry.update(id=slide_id, status=row.get("status", "cached"), reason=row.get("reason") or "")
        entry.update(path=row.get("path") or (attrs or {}).get("source", {}).get("path"), in_cache=attrs is not None)
        for key in ("label", "split", "stain"):
            entry[key] = (attrs or {}).get(key) or row.get(key) or None
        entry["source_mpp"] = _number(row.get("mpp"))
        entry["tiles"] = int(_number(row.get("tiles")) or 0)
        if attrs is not None:
            scale = tile_scale(attrs, f"{cache.path}/slides/{slide_id}")
            entry.update(
                source_mpp=scale["level0_mpp"], mpp_source=attrs.get("mpp_source"), tiles=int(attrs["num_tiles"])
            )
            entry.update(tile_mpp=scale["um_per_px"], tile_px=scale["tile_px"], tile_um=scale["tile_um"])
            entry.update(read_level=attrs.get("read_level"), scale=attrs.get("scale"))
            entry["tissue_fraction_slide"] = attrs.get("tissue_fraction_slide")
        table.append(entry)
    return table


def _number(text) -> float | None:
    """A manifest cell as a float; None when empty or not a number (manifests are text)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def tile_table(cache: SlideCache, slide_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every tile of ``slide_ids`` (default all) as columns: ``slide_id``, ``tile`` (index in the
    slide's ``tiles``), ``x``, ``y`` (level-0 top-left), ``col``, ``row`` (grid position) and
    ``tissue``, the tissue fraction of the tile measured on the thumbnail's mask when it was kept (at
    least the run's ``min_tissue``). Columns, not rows: a million tiles stay a few arrays
    (``pandas.DataFrame(tile_table(cache))``)."""
    slide_ids = cache.ids if slide_ids is None else list(slide_ids)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("slide_id", "tile", "x", "y", "col", "row", "tissue")}
    for slide_id in slide_ids:
        tissue, coords, grid = cache.tissue(slide_id), cache.coords(slide_id), cache.grid(slide_id)
        if not len(tissue) == len(coords) == len(grid):
            raise CacheError(
                f"{cache.path}/slides/{slide_id}: tissue, coords and grid have {len(tissue)}, {len(coords)} "
                f"and {len(grid)} rows; the cache is damaged"
            )
        parts["slide_id"].append(np.full(len(tissue), slide_id, dtype=object))
        parts["tile"].append(np.arange(len(tissue)))
        parts["x"].append(coords[:, 0])
        parts["y"].append(coords[:, 1])
        parts["col"].append(grid[:, 0])
        parts["row"].append(grid[:, 1])
        parts["tissue"].append(tissue.astype(np.float64))
    empty = {"slide_id": object, "tissue": np.float64}
    return {k: np.concatenate(v) if v else np.empty(0, dtype=empty.get(k, np.int64)) for k, v in parts.items()}


def sample_tiles(
    cache: SlideCache, slide_id: str, n: int = 16, rng: np.random.Generator | int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct tiles of one slide drawn at random (all of them when it has fewer): their
    indices, ascending, and pixels ``uint8 [n, T, T, 3]``. ``rng`` is a generator or a seed, so a
    notebook's picture is the same on every run."""
    if n < 1:
        raise ValueError(f"sample_tiles: n must be >= 1, got {n}")
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    total = cache.num_tiles(slide_id)
    indices = np.sort(rng.choice(total, size=min(n, total), replace=False))
    return indices, cache.tile_reader(slide_id).read(indices)


def tile_mosaic(
    tiles: np.ndarray, columns: int | None = None, border: int = 2, fill: int | tuple[int, ...] = 255
) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` (or ``[N, H, W]``) laid out in a grid, row by row: tile ``i`` at grid row
    ``i // columns``, column ``i % columns``, its top-left pixel at ``(border + row·(H + border),
    border + column·(W + border))``. ``border`` pixels of ``fill`` separate the tiles and frame the grid
    (cells after the last tile are ``fill`` too). ``columns`` defaults to ``ceil(sqrt(N))``. Tiles are
    not resized, so one pixel of the mosaic is one pixel of a tile (a scale bar drawn on it is right).
    """
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4) or len(tiles) == 0:
        raise ValueError(f"tile_mosaic: tiles must be a non-empty [N, H, W] or [N, H, W, C] array, got {tiles.shape}")
    if border < 0:
        raise ValueError(f"tile_mosaic: border must be >= 0, got {border}")
    n, h, w = tiles.shape[:3]
    columns = math.ceil(math.sqrt(n)) if columns is None else columns
    if columns < 1:
        raise ValueError(f"tile_mosaic: columns must be >= 1, got {columns}")
    rows = math.ceil(n / columns)
    canvas = np.empty((rows * (h + border) + border, columns * (w + border) + border, *tiles.shape[3:]), tiles.dtype)
    canvas[...] = fill
    for i, tile in enumerate(tiles):
        top, left = border + (i // columns) * (h + border), border + (i % columns) * (w + border)
        canvas[top : top + h, left : left + w] = tile
    return canvas


def nice_length(mpp: float, width_px: int, max_fraction: float = 0.5) -> float:
    """The longest 1, 2 or 5 × 10^k µm that spans at most ``max_fraction`` of an image ``width_px``
    pixels wide at ``mpp`` µm/px: 50 µm on a 224-px tile at 0.5 µm/px (112 µm wide)."""
    if mpp <= 0 or width_px <= 0 or not 0 < max_fraction <= 1:
        raise ValueError(f"nice_length: mpp {mpp}, width {width_px} px, max_fraction {max_fraction} out of range")
    limit = width_px * mpp * max_fraction
    exponent = math.floor(math.log10(limit))
    candidates = [m * 10.0**e for e in (exponent - 1, exponent) for m in (1, 2, 5)]
    return round(max(c for c in candidates if c <= limit * (1 + 1e-12)), 12)


def format_length(length_um: float) -> str:
    """``50 µm``, ``0.5 µm``, ``1 mm``, ``2.5 mm``: the scale bar's label."""
    if length_um >= 1000:
        return f"{length_um / 1000:g} mm"
    return f"{length_um:g} µm"


def scale_bar_pixels(length_um: float, mpp: float) -> int:
    """The bar's length in pixels, ``round(length_um / mpp)``; at least one pixel."""
    if mpp <= 0 or length_um <= 0:
        raise ValueError(f"scale bar: length {length_um} µm and resolution {mpp} µm/px must be > 0")
    pixels = round(length_um / mpp)
    if pixels < 1:
        raise ValueError(f"scale bar: {length_um} µm at {mpp} µm/px is under one pixel; choose a longer bar")
    return pixels


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans when the system has it; else Pillow's built-in bitmap font, which (unlike its
    default scalable one) has the µ sign."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default_imagefont()


def draw_scale_bar(
    image: np.ndarray | Image.Image,
    mpp: float,
    length_um: float | None = None,
    *,
    label: bool = True,
    colour: tuple[int, int, int] = (0, 0, 0),
    background: tuple[int, int, int] | None = (255, 255, 255),
    thickness: int | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """A copy of ``image`` (``[H, W]`` or ``[H, W, 3]`` uint8, at ``mpp`` µm/px) with a scale bar in its
    bottom-left corner: exactly :func:`scale_bar_pixels` ``(length_um, mpp)`` pixels long and
    ``thickness`` high, in ``colour``, labelled above (``50 µm``) on a ``background`` box (None: no box)
    so it reads over tissue. ``length_um`` defaults to :func:`nice_length`. Returns ``uint8 [H, W, 3]``.
    """
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"draw_scale_bar: image must be uint8 [H, W] or [H, W, 3], got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    length_um = nice_length(mpp, width) if length_um is None else length_um
    bar = scale_bar_pixels(length_um, mpp)
    thickness = max(2, round(height / 60)) if thickness is None else thickness
    margin = max(3, round(min(height, width) / 30)) if margin is None else margin
    canvas = Image.fromarray(pixels).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    text = format_length(length_um)
    font = _font(max(10, round(height / 18)))
    left, top_text, right, bottom_text = draw.textbbox((0, 0), text, font=font) if label else (0, 0, 0, 0)
    text_h, gap, pad = bottom_text - top_text, 2 if label else 0, 2
    x0, y1 = margin, height - margin  # bar: columns [x0, x0 + bar), rows [y1 - thickness, y1)
    y0 = y1 - thickness
    if x0 + max(bar, right - left) + margin > width or text_h + gap + thickness + 2 * margin > height:
        raise ValueError(
            f"draw_scale_bar: a {bar}-px bar ({text}) and its label do not fit a {width}×{height} image; "
            "pass a shorter length_um"
        )
    if background is not None:
        box_right = x0 + max(bar, right - left) + pad - 1
        draw.rectangle((x0 - pad, y0 - gap - text_h - pad, box_right, y1 + pad - 1), fill=background)
    draw.rectangle((x0, y0, x0 + bar - 1, y1 - 1), fill=colour)
    if label:
        text_x = x0 + (bar - (right - left)) / 2 if bar >= right - left else x0
        draw.text((text_x - left, y0 - gap - text_h - top_text), text, fill=colour, font=font)
    return np.asarray(canvas)
