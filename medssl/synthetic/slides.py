"""Pyramidal whole-slide images made from real stained-tissue pixels, with known ground truth.

Tests, the demo and benchmarks need gigapixel-style slides without downloading any. We draw tissue
pieces (ellipses) on glass and fill them with real immunohistochemistry texture shipped by
scikit-image, then write a tiled, JPEG-compressed pyramid with tifffile, one page per level (the
layout OpenSlide reads as generic TIFF), with the MPP either in the TIFF resolution tags, in an
Aperio-style description, or absent. Pixels are rendered tile by tile, so a 40,000 × 40,000 slide
never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile

GLASS_RGB = (238, 236, 234)


@lru_cache(maxsize=4)
def texture(name: str = "ihc") -> np.ndarray:
    """A real RGB texture that scikit-image ships: 'ihc' (immunohistochemistry, brown/blue stain)
    or 'retina' (fundus photograph, orange/red), cropped to its content."""
    from skimage import data

    if name == "ihc":
        return _counterstain(data.immunohistochemistry())
    if name == "retina":
        image = data.retina()
        return np.ascontiguousarray(image[400:1000, 400:1000, :3])
    raise ValueError(f"unknown texture {name!r}; use 'ihc' or 'retina'")


def _counterstain(rgb: np.ndarray, stain=(176, 146, 200), below: float = 30.0) -> np.ndarray:
    """Tint unstained (near-white) pixels towards a light counterstain, as a real section's stroma is,
    so every pixel inside a tissue piece is stained and the ground-truth tissue mask is the shape."""
    from medssl.preprocess.tissue import saturation

    weight = np.clip((below - saturation(rgb)) / below, 0.0, 1.0)[..., None] * 0.6
    tinted = rgb * (1 - weight) + np.asarray(stain, dtype=np.float32) * weight
    return np.ascontiguousarray(tinted.round().astype(np.uint8))


@dataclass(frozen=True)
class Ellipse:
    """An axis-aligned ellipse in level-0 pixels."""

    cx: float
    cy: float
    rx: float
    ry: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1.0


@dataclass
class SlideLayout:
    """What a synthetic slide shows: tissue pieces filled with ``tissue_texture`` and optional
    lesions (inside tissue) filled with ``lesion_texture``. All geometry is in level-0 pixels."""

    width: int
    height: int
    tissue: Sequence[Ellipse] = field(default_factory=list)
    lesions: Sequence[Ellipse] = field(default_factory=list)
    tissue_texture: str = "ihc"
    lesion_texture: str = "retina"
    texture_zoom: float = 1.0  #: level-0 pixels per texture pixel
    seed: int = 0

    def tissue_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground-truth tissue indicator at level-0 points."""
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for shape in self.tissue:
            inside |= shape.contains(x, y)
        return inside

    def lesion_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for shape in self.lesions:
            inside |= shape.contains(x, y)
        return inside & self.tissue_at(x, y)

    def render(self, x0: int, y0: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        """``uint8 [h, w, 3]`` pixels of the box starting at level-0 (x0, y0), sampled every
        ``downsample`` level-0 pixels (at pixel centres)."""
        xs = x0 + (np.arange(w) + 0.5) * downsample
        ys = y0 + (np.arange(h) + 0.5) * downsample
        x, y = np.meshgrid(xs, ys)
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = GLASS_RGB
        tissue = self.tissue_at(x, y)
        if tissue.any():
            out[tissue] = self._fill(self.tissue_texture, x[tissue], y[tissue], downsample)
            lesion = self.lesion_at(x, y)
            if lesion.any():
                out[lesion] = self._fill(self.lesion_texture, x[lesion], y[lesion], downsample)
        return out

    def _fill(self, name: str, x: np.ndarray, y: np.ndarray, downsample: float) -> np.ndarray:
        tex, reduced_by = texture_level(name, downsample / self.texture_zoom)
        return sample_texture(tex, x, y, self.texture_zoom * reduced_by)


@lru_cache(maxsize=32)
def texture_level(name: str, factor: float) -> tuple[np.ndarray, int]:
    """The named texture as a scanner's lower pyramid level would show it; see :func:`reduce_texture`."""
    return reduce_texture(texture(name), factor)


def reduce_texture(tex: np.ndarray, factor: float) -> tuple[np.ndarray, int]:
    """``tex [H, W, C]`` area-averaged by ``factor`` when that is a power of two dividing its size, as a
    scanner's lower pyramid levels are; else unchanged. Returns it (same dtype) and the factor applied."""
    step = int(round(factor))
    if step <= 1 or abs(factor - step) > 1e-9 or step & (step - 1) or tex.shape[0] % step or tex.shape[1] % step:
        return tex, 1
    h, w = tex.shape[0] // step, tex.shape[1] // step
    reduced = tex.reshape(h, step, w, step, *tex.shape[2:]).mean(axis=(1, 3))
    if np.issubdtype(tex.dtype, np.integer):
        reduced = reduced.round()
    return reduced.astype(tex.dtype), step


def sample_texture(tex: np.ndarray, x: np.ndarray, y: np.ndarray, px_per_texel: float) -> np.ndarray:
    """Mirror-tiled nearest sampling of a texture ``[H, W, ...]`` at level-0 points (any sign), so it covers
    any extent seamlessly. Returns ``x.shape + tex.shape[2:]``."""
    th, tw = tex.shape[:2]
    u = np.floor(x / px_per_texel).astype(np.intp) % (2 * tw)
    v = np.floor(y / px_per_texel).astype(np.intp) % (2 * th)
    u = np.minimum(u, 2 * tw - 1 - u)  # the mirrored copy: texel 2w-1-u
    v = np.minimum(v, 2 * th - 1 - v)
    # a flat take is several times faster than tex[v, u]
    return tex.reshape(th * tw, *tex.shape[2:]).take(v * tw + u, axis=0)


class SlideRenderer(Protocol):
    """What :func:`write_slide` writes: a level-0 extent and pixels of any box at any downsample."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def render(self, x0: int, y0: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray: ...


def write_slide(
    path: str | Path,
    layout: SlideRenderer,
    mpp: float | None = 0.25,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
    vendor: str = "generic",
) -> Path:
    """Write ``layout`` as a tiled JPEG pyramid, one TIFF page per level.

    ``vendor="generic"`` puts the MPP in the resolution tags (OpenSlide's generic-TIFF reader);
    ``"aperio"`` writes an Aperio ImageDescription with ``MPP``/``AppMag`` fields; ``mpp=None``
    writes no resolution at all (for testing the missing-MPP path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if vendor not in ("generic", "aperio"):
        raise ValueError(f"vendor must be 'generic' or 'aperio', got {vendor!r}")
    with tifffile.TiffWriter(path, bigtiff=layout.width * layout.height > 2**31 // 3) as tw:
        for ds in downsamples:
            w, h = max(1, layout.width // ds), max(1, layout.height // ds)
            options: dict = dict(
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                metadata=None,
            )
            if vendor == "aperio":
                magnification = 10.0 / mpp if mpp else 40
                description = (
                    f"Aperio Image Library medssl-synthetic\n{layout.width}x{layout.height} "
                    f"({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = {magnification:g}"
                )
                if mpp:
                    description += f"|MPP = {mpp}"
                options["description"] = description
            elif mpp:
                options["resolution"] = (1e4 / (mpp * ds), 1e4 / (mpp * ds))
                options["resolutionunit"] = "CENTIMETER"
            options["subfiletype"] = 0 if ds == 1 or vendor == "aperio" else 1
            tw.write(_tiles(layout, w, h, ds, tile), **options)
    return path


def _tiles(layout: SlideRenderer, w: int, h: int, ds: int, tile: int) -> Iterator[np.ndarray]:
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            bw, bh = min(tile, w - tx), min(tile, h - ty)
            pixels = layout.render(tx * ds, ty * ds, bw, bh, ds)
            if (bw, bh) == (tile, tile):
                yield pixels
                continue
            block = np.empty((tile, tile, 3), dtype=np.uint8)
            block[:] = GLASS_RGB
            block[:bh, :bw] = pixels
            yield block


def random_layout(
    width: int,
    height: int,
    n_pieces: int = 3,
    coverage: float = 0.35,
    n_lesions: int = 0,
    lesion_radius: float = 0.0,
    seed: int = 0,
) -> SlideLayout:
    """Tissue pieces covering about ``coverage`` of the slide, and ``n_lesions`` round lesions of
    ``lesion_radius`` level-0 pixels placed inside tissue."""
    rng = np.random.default_rng(seed)
    area_each = coverage * width * height / n_pieces
    pieces = []
    for k in range(n_pieces):
        aspect = rng.uniform(0.6, 1.4)
        rx = np.sqrt(area_each / np.pi * aspect)
        ry = area_each / (np.pi * rx)
        cx = width * (k + 0.5) / n_pieces
        cy = height * rng.uniform(0.4, 0.6)
        pieces.append(Ellipse(cx, cy, min(rx, width / (2 * n_pieces) * 0.95), min(ry, height * 0.38)))
    lesions = []
    for _ in range(n_lesions):
        piece = pieces[rng.integers(len(pieces))]
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5)
        cx = piece.cx + radius * piece.rx * np.cos(angle)
        cy = piece.cy + radius * piece.ry * np.sin(angle)
        lesions.append(Ellipse(cx, cy, lesion_radius, lesion_radius))
    return SlideLayout(width, height, pieces, lesions, seed=seed)


def write_demo_cohort(
    folder: str | Path, n_slides: int = 3, size: int = 6144, seed: int = 0, lesions: int = 0
) -> list[Path]:
    """A few small slides for the demo: 40× (0.25 µm/px) generic and Aperio TIFFs with 3 levels. Odd-numbered
    slides get ``lesions`` round lesions of retina texture (the "tumour" slides), the others none; every
    slide's lesion mask goes to ``folder/masks/<name>.png``. Slides already written are kept."""
    folder = Path(folder)
    paths = []
    for k in range(n_slides):
        layout = random_layout(
            size,
            int(size * 0.75),
            n_pieces=2 + k % 2,
            coverage=0.3,
            seed=seed + k,
            n_lesions=lesions if k % 2 else 0,
            lesion_radius=size / 20,
        )
        vendor = "aperio" if k % 2 else "generic"
        path = folder / f"demo-slide-{k}{'.svs' if vendor == 'aperio' else '.tiff'}"
        if not path.exists():
            write_slide(path, layout, mpp=0.25, vendor=vendor)
        write_lesion_mask(layout, folder / "masks" / f"demo-slide-{k}.png")
        paths.append(path)
    return paths


def lesion_mask(layout: SlideLayout, downsample: int = 16) -> np.ndarray:
    """The ground-truth lesion mask, bool ``[H / downsample, W / downsample]`` sampled at pixel centres."""
    w, h = max(1, layout.width // downsample), max(1, layout.height // downsample)
    xs, ys = (np.arange(w) + 0.5) * downsample, (np.arange(h) + 0.5) * downsample
    return layout.lesion_at(*np.meshgrid(xs, ys))


def write_lesion_mask(layout: SlideLayout, path: str | Path, downsample: int = 16) -> Path:
    """The lesion mask as a PNG (255 inside lesions), the format :class:`medssl.data.truth.LesionMasks` reads."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lesion_mask(layout, downsample).astype(np.uint8) * 255).save(path)
    return path


def write_lesion_cohort(
    folder: str | Path,
    n_slides: int = 24,
    size: int = 4096,
    lesions: tuple[int, int] = (1, 3),
    lesion_radius: float = 300.0,
    splits: Sequence[str] = ("train", "train", "val", "test"),
    seed: int = 0,
) -> Path:
    """A weakly labelled cohort for slide-level learning from real pixels: IHC tissue everywhere; in half
    of the slides (``positive``) a few round lesions of retina texture covering a small fraction of the
    tissue; the others (``negative``) none. Writes ``folder/<id>.tiff`` (0.25 µm/px, generic TIFF), the
    lesion masks ``folder/masks/<id>.png`` (for instance AUROC) and ``folder/cohort.csv``
    (slide_id, path, label, split; the splits cycle through ``splits`` per positive/negative pair, so
    every split gets both classes). Returns the CSV's path."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = ["slide_id,path,label,split"]
    for k in range(n_slides):
        positive = k % 2 == 1
        slide_id = f"lesion-cohort-{k:03d}"
        count = int(rng.integers(lesions[0], lesions[1] + 1)) if positive else 0
        layout = random_layout(
            size,
            int(size * 0.75),
            n_pieces=2,
            coverage=0.35,
            seed=seed * 1000 + k,
            n_lesions=count,
            lesion_radius=lesion_radius,
        )
        path = folder / f"{slide_id}.tiff"
        if not path.exists():
            write_slide(path, layout, mpp=0.25)
        write_lesion_mask(layout, folder / "masks" / f"{slide_id}.png")
        split = splits[(k // 2) % len(splits)]
        rows.append(f"{slide_id},{path.name},{'positive' if positive else 'negative'},{split}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"
