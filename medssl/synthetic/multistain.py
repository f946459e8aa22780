"""Multistain cases from real pixels: per case one H&E slide and several IHC slides of the same tissue.

MADELEINE trains a slide encoder so that an H&E slide's embedding agrees with the IHC slides (ER, PR,
HER2, Ki-67) of the same case, and no multistain data set ships with any package. So each case here is
one tissue layout (ellipses on glass) filled with scikit-image's real IHC image, colour-deconvolved into
haematoxylin (nuclei) and DAB (membranes) densities, and re-stained once per stain:

* **H&E**: haematoxylin from the texture's H; eosin on all tissue (a base density, more on the
  epithelium the texture's DAB marks, less where nuclei are); no DAB. **The label cue**: inside the
  case's label regions (ER's positive regions) the haematoxylin density is multiplied by
  ``1 + he_cue`` (default 0.2): nuclei there look a little denser and darker, nothing else changes.
* **IHC**: a lighter haematoxylin counterstain (a pale blue floor on all tissue plus the nuclei) and, only
  inside the stain's positive regions, DAB where the texture shows it: on the nuclei, strongest in the
  epithelium (ER, PR), on the nuclei of a random ~40 % of the cells (Ki-67), or on the membranes (HER2);
  nuclei under DAB lose up to half their haematoxylin, as under a real brown precipitate.

Positive regions are a smooth random field over the case thresholded so that they cover a drawn fraction
of the tissue: ER 20–40 % in positive cases and at most a few per cent in negative ones; PR is the same
field at a higher threshold (a subset of ER); HER2 and Ki-67 have fields and fractions of their own,
drawn without looking at the label, so not every stain carries it. Every stain's section is the case
layout moved by a small rigid motion (a few tens of level-0 pixels), as serial sections are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage

from medssl.synthetic.slides import (
    GLASS_RGB,
    Ellipse,
    SlideLayout,
    reduce_texture,
    sample_texture,
    write_slide,
)

HE = "HE"
DEFAULT_STAINS = ("HE", "ER", "PR", "HER2", "KI67")
MPP = 0.5  #: µm per level-0 pixel of every multistain slide

# Densities (scikit-image's H/E/DAB units) that the texture's normalised haematoxylin ``h`` and DAB ``d``
# (0..1, 1 = a dark nucleus / a strongly stained membrane) are re-stained with.
_H_FULL, _D_FULL = 0.06, 0.2  #: texture densities taken as 1
_HE_HAEMATOXYLIN = 0.1  #: per unit haematoxylin^1.5 (the power darkens nuclei against cytoplasm)
_HE_EOSIN = (0.025, 0.02, -0.01)  #: base, per unit DAB (epithelial cytoplasm), per unit haematoxylin
_IHC_COUNTERSTAIN = (0.012, 0.05)  #: floor, per unit haematoxylin^1.5: lighter than in H&E
_IHC_DAB = {"nuclear": 0.3, "scattered": 0.3, "membranous": 0.25}
_SCATTERED_FRACTION = 0.4  #: Ki-67-like: share of the nuclei stained
_ANGLE_DEG, _SHIFT_PX = 2.0, 20.0  #: serial-section misregistration (at most)


@dataclass(frozen=True)
class Marker:
    """An IHC stain: how its DAB looks and where it is positive.

    ``follows_label`` markers share the case's label field and cover ``fraction`` (drawn uniformly) *of
    the label regions* (so 1.0 is ER itself and less is a subset, like PR); the others get a field of
    their own covering ``fraction`` *of the tissue*, drawn without looking at the label."""

    pattern: str  #: "nuclear", "scattered" (a random share of the nuclei) or "membranous"
    follows_label: bool
    fraction: tuple[float, float]


MARKERS: dict[str, Marker] = {
    "ER": Marker("nuclear", follows_label=True, fraction=(1.0, 1.0)),
    "PR": Marker("nuclear", follows_label=True, fraction=(0.5, 1.0)),
    "HER2": Marker("membranous", follows_label=False, fraction=(0.0, 0.4)),
    "KI67": Marker("scattered", follows_label=False, fraction=(0.05, 0.35)),
}


# -- the texture, deconvolved and re-stained --------------------------------------------------------------


@lru_cache(maxsize=1)
def texture_densities() -> dict[str, np.ndarray]:
    """scikit-image's IHC image as normalised float32 maps ``[512, 512]`` in 0..1: ``h`` (haematoxylin),
    ``d`` (DAB: membranes), ``nuclei`` (the darkest haematoxylin), ``epithelium`` (where the DAB is dense:
    the glands) and ``scattered`` (the nuclei of a random share of the cells, for Ki-67)."""
    from skimage import color, data

    hed = color.rgb2hed(data.immunohistochemistry())
    h = np.clip(hed[..., 0] / _H_FULL, 0, 1)
    d = np.clip(hed[..., 2] / _D_FULL, 0, 1)
    nuclei = np.clip((h - 0.35) / 0.3, 0, 1)
    epithelium = np.clip((ndimage.gaussian_filter(d, 8) - 0.1) / 0.25, 0, 1)
    # cast: SciPy ships no type hints (as in medssl.preprocess.tissue)
    blobs, count = cast(tuple[np.ndarray, int], ndimage.label(ndimage.binary_dilation(nuclei > 0, iterations=2)))
    chosen = np.random.default_rng(0).random(count + 1) < _SCATTERED_FRACTION
    chosen[0] = False
    maps = {"h": h, "d": d, "nuclei": nuclei, "epithelium": epithelium, "scattered": nuclei * chosen[blobs]}
    return {k: v.astype(np.float32) for k, v in maps.items()}


def stain_densities(look: str, positive: bool, he_cue: float = 0.2) -> np.ndarray:
    """Haematoxylin, eosin and DAB densities ``float32 [512, 512, 3]`` of the texture re-stained as
    ``look`` ("HE" or a :class:`Marker` pattern), inside (``positive``) or outside the stain's regions."""
    t = texture_densities()
    h, d, epithelium = t["h"], t["d"], t["epithelium"]
    zero = np.zeros_like(h)
    if look == HE:
        haematoxylin = _HE_HAEMATOXYLIN * h**1.5 * (1 + he_cue if positive else 1.0)
        base, per_d, per_h = _HE_EOSIN
        eosin = np.maximum(base + per_d * d + per_h * h, 0.01)
        return np.stack([haematoxylin, eosin, zero], axis=-1)
    if look not in _IHC_DAB:
        raise ValueError(f"unknown stain look {look!r}; use 'HE' or one of {sorted(_IHC_DAB)}")
    floor, per_h = _IHC_COUNTERSTAIN
    haematoxylin = floor + per_h * h**1.5
    if not positive:
        return np.stack([haematoxylin, zero, zero], axis=-1)
    if look == "membranous":
        dab = _IHC_DAB[look] * d
    else:
        dab = _IHC_DAB[look] * t["scattered" if look == "scattered" else "nuclei"] * (0.4 + 0.6 * epithelium)
        haematoxylin = haematoxylin * (1 - 0.5 * dab / _IHC_DAB[look])
    return np.stack([haematoxylin, zero, dab], axis=-1)


@lru_cache(maxsize=16)
def stained_rgb(look: str, he_cue: float = 0.2) -> np.ndarray:
    """``uint8 [512, 512, 6]``: the texture re-stained as ``look``, RGB outside the stain's regions then
    RGB inside (see :func:`stain_densities`)."""
    from skimage import color

    rgb = [color.hed2rgb(stain_densities(look, positive, he_cue)) for positive in (False, True)]
    return (np.concatenate(rgb, axis=-1) * 255).round().clip(0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def stained_texture(look: str, he_cue: float, factor: float) -> tuple[np.ndarray, int]:
    """:func:`stained_rgb` reduced for a pyramid level ``factor`` coarser (see :func:`reduce_texture`), and
    the reduction applied. Each texel is one little-endian ``uint64``: bytes 0-2 the RGB outside the
    stain's regions, bytes 3-5 the RGB inside, so one gather fetches both (several times faster than
    gathering bytes)."""
    reduced, step = reduce_texture(stained_rgb(look, he_cue), factor)
    padded = np.zeros((*reduced.shape[:2], 8), dtype=np.uint8)
    padded[..., :6] = reduced
    return padded.view("<u8")[..., 0], step


def _unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """``uint8 [..., 3]`` from the low three bytes of little-endian ``uint64`` texels."""
    return packed.astype("<u8", copy=False).view(np.uint8).reshape(*packed.shape, 8)[..., :3]


_GLASS_PACKED = int.from_bytes(bytes(GLASS_RGB), "little")


def _look(stain: str) -> str:
    return HE if stain == HE else MARKERS[stain].pattern


# -- geometry: regions, cases, sections -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Region:
    """A region as a boolean raster over the case: cell ``(i, j)`` covers level-0 pixels
    ``[j * cell, (j + 1) * cell) × [i * cell, (i + 1) * cell)``; points off the raster take the nearest cell."""

    mask: np.ndarray
    cell: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rows, cols = self.mask.shape
        # truncation equals floor wherever the clip does not bite (it differs only on (-1, 0))
        i = np.clip((y / self.cell).astype(np.intp), 0, rows - 1)
        j = np.clip((x / self.cell).astype(np.intp), 0, cols - 1)
        return self.mask.ravel().take(i * cols + j)


@dataclass(frozen=True, eq=False)
class MultistainCase:
    """One case's tissue (``layout``: pieces and texture scale), where each stain is positive
    (``regions``; "HE" holds the label regions that carry the H&E cue) and how the texture is laid on the
    case (one of 8 flips/transpositions and an offset in level-0 pixels, shared by all its stains)."""

    layout: SlideLayout
    regions: Mapping[str, Region]
    label: str
    orientation: int = 0
    offset: tuple[float, float] = (0.0, 0.0)

    def texture_coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.orientation & 4:
            x, y = y, x
        if self.orientation & 1:
            x = -x
        if self.orientation & 2:
            y = -y
        return x + self.offset[0], y + self.offset[1]


@dataclass(frozen=True)
class RigidMotion:
    """Section coordinates → case coordinates: a rotation by ``angle`` (radians) about ``centre``, then a
    ``shift`` (level-0 pixels)."""

    angle: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    centre: tuple[float, float] = (0.0, 0.0)

    def to_case(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.angle), np.sin(self.angle)
        (cx, cy), (sx, sy) = self.centre, self.shift
        # grouped so that a row of x and a column of y make one full-size operation per output
        u = (c * (x - cx) + (cx + sx)) - s * (y - cy)
        v = (s * (x - cx)) + (c * (y - cy) + (cy + sy))
        return u, v


@dataclass(frozen=True, eq=False)
class StainedSection:
    """One stain's slide of a case: what :func:`medssl.synthetic.slides.write_slide` writes."""

    case: MultistainCase
    stain: str
    motion: RigidMotion = RigidMotion()
    he_cue: float = 0.2

    @property
    def width(self) -> int:
        return self.case.layout.width

    @property
    def height(self) -> int:
        return self.case.layout.height

    def positive_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground truth at section points: tissue inside this stain's positive (for H&E: label) regions."""
        u, v = self.motion.to_case(x, y)
        return self.case.layout.tissue_at(u, v) & self.case.regions[self.stain].contains(u, v)

    def render(self, x0: int, y0: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        """``uint8 [h, w, 3]`` pixels of the box at level-0 (x0, y0), sampled every ``downsample`` pixels."""
        xs = x0 + (np.arange(w)[None, :] + 0.5) * downsample
        ys = y0 + (np.arange(h)[:, None] + 0.5) * downsample
        pieces = self._pieces_near(xs, ys)  # most boxes meet one piece or none: skip the others' maths
        u, v = self.motion.to_case(xs, ys)
        tissue = np.zeros((h, w), dtype=bool)
        for piece in pieces:
            tissue |= piece.contains(u, v)
        if not tissue.any():
            return np.broadcast_to(np.asarray(GLASS_RGB, dtype=np.uint8), (h, w, 3)).copy()
        zoom = self.case.layout.texture_zoom
        texture, reduced_by = stained_texture(_look(self.stain), self.he_cue, downsample / zoom)
        packed = sample_texture(texture, *self.case.texture_coords(u, v), zoom * reduced_by)
        positive = self.case.regions[self.stain].contains(u, v)
        packed = np.where(positive, packed >> np.uint64(24), packed)
        packed[~tissue] = _GLASS_PACKED
        return np.ascontiguousarray(_unpack_rgb(packed))

    def _pieces_near(self, xs: np.ndarray, ys: np.ndarray) -> list[Ellipse]:
        """The tissue pieces whose bounding box meets the box spanned by these points, moved to the case."""
        corners = np.array([[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.max()]])
        u, v = self.motion.to_case(corners[:, 0], corners[:, 1])
        return [
            e
            for e in self.case.layout.tissue
            if u.min() <= e.cx + e.rx and u.max() >= e.cx - e.rx and v.min() <= e.cy + e.ry and v.max() >= e.cy - e.ry
        ]

    def positive_mask(self, downsample: int = 16) -> np.ndarray:
        """The positive regions on tissue, bool ``[H / downsample, W / downsample]`` at pixel centres."""
        w, h = max(1, self.width // downsample), max(1, self.height // downsample)
        return self.positive_at(*np.meshgrid((np.arange(w) + 0.5) * downsample, (np.arange(h) + 0.5) * downsample))


def smooth_field(shape: tuple[int, int], sigma_cells: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred into blobs about ``sigma_cells`` wide, scaled to unit spread."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_cells, mode="wrap")
    return (field / (field.std() + 1e-12)).astype(np.float32)


def covering_region(field: np.ndarray, cell: float, on: np.ndarray, fraction: float, fine: int = 8) -> Region:
    """Where ``field`` (on ``cell``-pixel cells) is in its top ``fraction`` over the cells ``on`` (the
    tissue), as a raster ``fine`` times finer: the field is interpolated bilinearly before the threshold,
    so region edges are smooth curves, not the coarse cells' staircase."""
    rows, cols = field.shape
    if fraction <= 0 or not on.any():
        return Region(np.zeros((rows * fine, cols * fine), dtype=bool), cell / fine)
    threshold = np.quantile(field[on], 1.0 - min(fraction, 1.0))
    fine_field = _linear_upsampling(rows, fine) @ field @ _linear_upsampling(cols, fine).T
    return Region(fine_field >= threshold, cell / fine)


def _linear_upsampling(n: int, fine: int) -> np.ndarray:
    """``[n * fine, n]``: linear interpolation of ``n`` cell values at the centres of ``fine`` sub-cells
    per cell (held constant beyond the outer centres), as a matrix so a 2-D field is two products."""
    position = np.clip((np.arange(n * fine) + 0.5) / fine - 0.5, 0, n - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    weight = (position - low).astype(np.float32)
    matrix = np.zeros((n * fine, n), dtype=np.float32)
    rows = np.arange(n * fine)
    np.add.at(matrix, (rows, low), 1 - weight)
    np.add.at(matrix, (rows, high), weight)
    return matrix


def random_pieces(width: int, height: int, rng: np.random.Generator, margin: float = 2 * _SHIFT_PX) -> list[Ellipse]:
    """1–3 elliptical tissue pieces placed anywhere (they may overlap) that together cover 30–50 % of
    the slide, at least ``margin`` pixels from its edges so the sections' motion keeps them on the glass."""
    count = int(rng.integers(1, 4))
    areas = rng.dirichlet(np.full(count, 3.0)) * rng.uniform(0.3, 0.5) * width * height
    inner_w, inner_h = width - 2 * margin, height - 2 * margin
    pieces = []
    for area in areas:
        aspect = rng.uniform(0.6, 1.6)
        rx = min(np.sqrt(area / np.pi * aspect), 0.45 * inner_w)
        ry = min(area / (np.pi * rx), 0.45 * inner_h)
        cx = margin + rng.uniform(rx, inner_w - rx)
        cy = margin + rng.uniform(ry, inner_h - ry)
        pieces.append(Ellipse(float(cx), float(cy), float(rx), float(ry)))
    return pieces


def random_case(
    width: int,
    height: int,
    positive: bool,
    stains: Sequence[str] = DEFAULT_STAINS,
    rng: np.random.Generator | None = None,
    positive_coverage: tuple[float, float] = (0.2, 0.4),
    negative_coverage: tuple[float, float] = (0.0, 0.03),
    blob_px: float = 80.0,
    cell: float = 16.0,
) -> MultistainCase:
    """A case: tissue pieces (:func:`random_pieces`), label regions covering a fraction of the tissue drawn from
    ``positive_coverage`` or ``negative_coverage``, and every marker's regions (see :class:`Marker`).
    ``blob_px`` is the spatial scale (Gaussian sigma, level-0 pixels) of the regions' blobs."""
    rng = rng or np.random.default_rng()
    for stain in stains:
        if stain != HE and stain not in MARKERS:
            raise ValueError(f"unknown stain {stain!r}; use 'HE' or one of {sorted(MARKERS)}")
    tissue = random_pieces(width, height, rng)
    layout = SlideLayout(width, height, tissue)
    grid = (int(np.ceil(height / cell)), int(np.ceil(width / cell)))
    centres = np.meshgrid((np.arange(grid[1]) + 0.5) * cell, (np.arange(grid[0]) + 0.5) * cell)
    on = layout.tissue_at(*centres)
    label_field = smooth_field(grid, blob_px / cell, rng)
    coverage = float(rng.uniform(*(positive_coverage if positive else negative_coverage)))
    regions = {HE: covering_region(label_field, cell, on, coverage)}
    for stain in stains:
        if stain == HE:
            continue
        marker = MARKERS[stain]
        fraction = float(rng.uniform(*marker.fraction))
        if marker.follows_label:
            regions[stain] = covering_region(label_field, cell, on, coverage * fraction)
        else:
            regions[stain] = covering_region(smooth_field(grid, blob_px / cell, rng), cell, on, fraction)
    offset = tuple(float(o) for o in rng.uniform(0, 4096, size=2))
    return MultistainCase(
        layout,
        regions,
        "positive" if positive else "negative",
        orientation=int(rng.integers(8)),
        offset=(offset[0], offset[1]),
    )


def random_motion(width: int, height: int, rng: np.random.Generator) -> RigidMotion:
    """A serial section's misregistration: up to ±2° about the slide centre and ±20 level-0 pixels."""
    return RigidMotion(
        angle=float(np.deg2rad(rng.uniform(-_ANGLE_DEG, _ANGLE_DEG))),
        shift=(float(rng.uniform(-_SHIFT_PX, _SHIFT_PX)), float(rng.uniform(-_SHIFT_PX, _SHIFT_PX))),
        centre=(width / 2, height / 2),
    )


def case_sections(
    case: MultistainCase, stains: Sequence[str], rng: np.random.Generator, he_cue: float = 0.2
) -> dict[str, StainedSection]:
    """One section per stain of ``case``, each with its own small rigid motion."""
    w, h = case.layout.width, case.layout.height
    return {stain: StainedSection(case, stain, random_motion(w, h, rng), he_cue) for stain in stains}


def present_stains(stains: Sequence[str], missing: float, rng: np.random.Generator) -> list[str]:
    """``stains`` with each IHC stain dropped with probability ``missing``; H&E and at least one IHC stain
    (when any is asked for) always stay."""
    ihc = [s for s in stains if s != HE]
    kept = [s for s in ihc if rng.random() >= missing]
    if ihc and not kept:
        kept = [ihc[int(rng.integers(len(ihc)))]]
    return [HE, *[s for s in ihc if s in kept]]


# -- the cohort -------------------------------------------------------------------------------------------


def write_multistain_cohort(
    folder: str | Path,
    n_cases: int = 40,
    stains: Sequence[str] = DEFAULT_STAINS,
    missing: float = 0.2,
    size: tuple[int, int] = (1536, 1152),
    he_cue: float = 0.2,
    splits: Sequence[str] = ("train", "train", "val", "test"),
    seed: int = 0,
) -> Path:
    """A multistain cohort for MADELEINE-style pretraining and slide-level probes. Case ``k`` is
    ``positive`` when ``k`` is odd (balanced); its split is ``splits[(k // 2) % len(splits)]`` (both
    classes in every split, all of a case's slides in one split). Writes ``folder/<case_id>_<stain>.tiff``
    for every present slide (generic TIFF, 0.5 µm/px, 128-px tiles, levels 1/4/16), the positive regions
    on tissue ``folder/masks/<slide_id>.png`` (for H&E: the label regions carrying the cue) and
    ``folder/cohort.csv`` (slide_id, path, case_id, stain, label, split). Slides already written are kept
    (each is written under a temporary name and renamed, so an interrupted run leaves none half-written).
    A case is drawn from ``(seed, k)`` alone, so it is the same whatever ``n_cases``. Returns the CSV."""
    if HE not in stains:
        raise ValueError(f"stains must include {HE!r} (MADELEINE aligns every stain to H&E), got {list(stains)}")
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1), got {missing}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    rows = ["slide_id,path,case_id,stain,label,split"]
    for k in range(n_cases):
        rng = np.random.default_rng([seed, k])
        case_id = f"ms-case-{k:03d}"
        case = random_case(width, height, positive=k % 2 == 1, stains=stains, rng=rng)
        sections = case_sections(case, stains, rng, he_cue)
        split = splits[(k // 2) % len(splits)]
        for stain in present_stains(stains, missing, rng):
            slide_id = f"{case_id}_{stain}"
            path = folder / f"{slide_id}.tiff"
            if not path.exists():
                partial = folder / f".{slide_id}.tiff.partial"
                write_slide(partial, sections[stain], mpp=MPP, downsamples=(1, 4, 16), tile=128)
                os.replace(partial, path)
            _write_mask(sections[stain].positive_mask(16), folder / "masks" / f"{slide_id}.png")
            rows.append(f"{slide_id},{path.name},{case_id},{stain},{case.label},{split}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"


def _write_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
