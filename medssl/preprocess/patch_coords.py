"""CLAM / TRIDENT patch-coordinate HDF5 files: their attributes, read and checked, and the tiles at
exactly their locations (``medssl tile --coords``); the writer is :mod:`medssl.export.h5`.

Both tools write one ``.h5`` per slide with a dataset ``coords`` (``[N, 2]`` level-0 x, y of each
patch's top-left corner) whose attributes say how big a patch is. They say it differently:

- CLAM: ``patch_size`` in pixels of pyramid level ``patch_level`` (so ``patch_size × downsample`` level-0
  pixels), plus ``downsample``, ``level_dim``, ``downsampled_level_dim``, ``name``;
- TRIDENT: ``patch_size`` in pixels at ``target_magnification``, ``patch_size_level0`` (level-0 pixels,
  rounded down), ``level0_magnification``, ``overlap`` (target pixels), ``name``, ``level0_width/height``.

medssl tiles at an exact MPP, so a tile's level-0 side ``tile_size × target_mpp / mpp`` is usually not
a whole number of pixels of any level. Every footprint a file states is checked against the cohort's
(``--mpp``, ``--tile-size``) within its own rounding, and tiles are read at the cohort's exact MPP
from each coordinate. docs/interop.md has the full mapping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import MedsslError, SlideError
from medssl.preprocess.slides import Slide
from medssl.preprocess.tiling import Thumbnail, TileGrid, TilingParams, read_block
from medssl.preprocess.tissue import box_fractions

STYLES = ("trident", "clam")  #: which tool's meaning of ``patch_size`` an exported file follows


def require_h5py():
    """The h5py module, or a clear error saying how to install it (it is an optional extra)."""
    try:
        import h5py
    except ImportError:
        raise MedsslError("HDF5 interop needs h5py: pip install 'medssl[h5]'") from None
    return h5py


def file_sha256(path: Path) -> str:
    """Content hash of a small side file (coordinates, annotations): a changed file re-tiles its slide."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def coords_file(folder: Path, slide_id: str) -> Path:
    """``<folder>/<slide_id>.h5`` (CLAM, medssl), else TRIDENT's ``<slide_id>_patches.h5``."""
    for name in (f"{slide_id}.h5", f"{slide_id}_patches.h5"):
        if (folder / name).is_file():
            return folder / name
    raise SlideError(
        f"{folder / (slide_id + '.h5')}: no coordinates file for slide {slide_id!r} (nor {slide_id}_patches.h5)"
    )


# -- reading ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchCoords:
    """The coordinates of one file and the attributes of its ``coords`` dataset, as plain Python values."""

    path: Path
    coords: np.ndarray  #: int64 [N, 2] level-0 (x, y) top-left corners, in the file's order
    attrs: dict[str, Any]


def read_patch_coords(path: str | Path) -> PatchCoords:
    """The ``coords`` dataset of a CLAM/TRIDENT/medssl ``.h5`` file; anything malformed is a
    :class:`~medssl.errors.SlideError` naming the file."""
    h5py = require_h5py()
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            if "coords" not in handle:
                raise SlideError(f"{path}: no 'coords' dataset (has {sorted(handle.keys())})")
            dataset = handle["coords"]
            if not isinstance(dataset, h5py.Dataset):
                raise SlideError(f"{path}: 'coords' is a group, not a dataset")
            coords = np.asarray(dataset[()])
            attrs = {key: _plain(value) for key, value in dataset.attrs.items()}
    except OSError as exc:
        raise SlideError(f"{path}: not a readable HDF5 file ({exc})") from None
    if coords.ndim != 2 or coords.shape[1] != 2 or not np.issubdtype(coords.dtype, np.number):
        raise SlideError(f"{path}: 'coords' must be a numeric [N, 2] array, got {coords.dtype} {list(coords.shape)}")
    if len(coords) == 0:
        raise SlideError(f"{path}: 'coords' is empty; there is nothing to tile")
    if not np.array_equal(coords, np.round(coords)):
        raise SlideError(f"{path}: 'coords' must be whole level-0 pixels")
    return PatchCoords(path, coords.astype(np.int64), attrs)


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON-able Python (h5py gives NumPy scalars, arrays and sometimes bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def stated_footprints(
    attrs: Mapping[str, Any], level_downsample: Callable[[int], float], level_count: int, where: Path
) -> list[tuple[str, float, float]]:
    """Every level-0 patch side a file's attributes state: ``(how it was read, side, allowed rounding)``.

    TRIDENT's ``patch_size_level0`` is rounded down (allow 1 px); a CLAM ``patch_size`` counts pixels of
    ``patch_level`` (allow half a pixel of that level, at least 1 level-0 px).
    """
    found: list[tuple[str, float, float]] = []
    for key in ("patch_size_level0", "medssl_tile_size_level0"):
        if key in attrs:
            found.append((f"{key} = {attrs[key]}", _positive(attrs, key, where), 1.0))
    if "patch_size" in attrs:
        size = _positive(attrs, "patch_size", where)
        if "level0_magnification" in attrs and "target_magnification" in attrs:
            ratio = _positive(attrs, "level0_magnification", where) / _positive(attrs, "target_magnification", where)
            text = f"patch_size {size:g} at {attrs['target_magnification']}x of {attrs['level0_magnification']}x"
            found.append((text, size * ratio, 1.0))
        if "patch_level" in attrs:
            level = attrs["patch_level"]
            if isinstance(level, float) and level.is_integer():  # some writers store it as a float
                level = int(level)
            if not isinstance(level, int) or not 0 <= level < level_count:
                raise SlideError(f"{where}: patch_level {level!r} is not a level of this slide (0..{level_count - 1})")
            factor = level_downsample(level) * float(attrs.get("custom_downsample", 1) or 1)
            found.append(
                (f"patch_size {size:g} at level {level} (downsample {factor:.4g})", size * factor, max(1.0, factor / 2))
            )
    if not found:
        raise SlideError(
            f"{where}: cannot tell the patch size in level-0 pixels (needs patch_size_level0, or patch_size with "
            f"patch_level or with level0/target_magnification); has attrs {sorted(attrs)}"
        )
    return found


def _positive(attrs: Mapping[str, Any], key: str, where: Path) -> float:
    value = attrs[key]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise SlideError(f"{where}: attribute {key} must be a positive number, got {value!r}")
    return float(value)


def check_footprint(patches: PatchCoords, slide: Slide, params: TilingParams) -> float:
    """Refuse a file whose patches do not span the cohort's tiles (``--mpp`` × ``--tile-size``) in
    level-0 pixels, within rounding; returns the cohort's exact side."""
    side = params.tile_size * params.target_mpp / slide.mpp
    for text, stated, allowed in stated_footprints(
        patches.attrs, lambda level: max(slide.level_downsample(level)), slide.level_count, patches.path
    ):
        if abs(stated - side) > allowed + 1e-6:
            mpp = stated * slide.mpp / params.tile_size
            raise SlideError(
                f"{patches.path}: its patches are {stated:.2f} level-0 px ({text}) but {params.tile_size}-px tiles at "
                f"{params.target_mpp} µm/px on this {slide.mpp:.4g} µm/px slide are {side:.2f}; tile with "
                f"--mpp {mpp:.4g} (or a matching --tile-size), or fix the slide's MPP"
            )
    w0, h0 = slide.dimensions
    x, y = patches.coords[:, 0], patches.coords[:, 1]
    outside = np.flatnonzero((x >= w0) | (y >= h0) | (x + side <= 0) | (y + side <= 0))
    if len(outside):
        i = int(outside[0])
        raise SlideError(
            f"{patches.path}: coords row {i} ({x[i]}, {y[i]}) lies outside the slide ({w0} × {h0}); "
            f"{len(outside)} such row(s) — is this the coordinates file of another slide?"
        )
    return side


# -- the grid -------------------------------------------------------------------------------------
@dataclass
class PlacedTileGrid(TileGrid):
    """Tiles at given level-0 corners. A corner that is a point of the cohort's own grid (the rounding
    of ``grid × stride × l0_per_target``, as ``medssl tile`` writes them) is read from the exact grid
    position, block by block, so re-tiling medssl's own coordinates gives identical pixels; any other
    corner is read on its own, from exactly that level-0 pixel."""

    origins_l0: np.ndarray | None = None  #: float [N, 2] exact level-0 corner each tile is read from
    on_grid: np.ndarray | None = None  #: bool [N] corners that are grid points

    def read(self, slide: Slide, params: TilingParams, level: int, block: slice) -> np.ndarray:
        if self.on_grid is None or self.origins_l0 is None or self.on_grid[block].all():
            return read_block(slide, self, params, level, block)
        size, side = params.tile_size, params.tile_size * self.l0_per_target
        out = np.empty((block.stop - block.start, size, size, 3), dtype=np.uint8)
        for i, (x, y) in enumerate(self.origins_l0[block]):
            needed = np.array([[x, y, x + side, y + side]])
            out[i] = slide.read_resampled(level, (x, y), (side, side), (size, size), params.resample, needed)
        return out


def plan_coords_grid(slide: Slide, thumb: Thumbnail, params: TilingParams, coords: np.ndarray) -> PlacedTileGrid:
    """Tiles at exactly ``coords`` (level-0 corners, kept in their order, none dropped), each with its
    tissue fraction on ``thumb.mask``, grouped into read blocks as :func:`~medssl.preprocess.tiling.plan_grid` does."""
    w0, h0 = slide.dimensions
    r = params.target_mpp / slide.mpp
    step, size = params.step, params.tile_size
    cols = int((w0 / r - size) // step) + 1 if w0 / r >= size else 0
    rows = int((h0 / r - size) // step) + 1 if h0 / r >= size else 0
    cell = np.round(coords / (step * r)).astype(np.int64)
    on_grid = (cell >= 0).all(axis=1) & (np.round(cell.astype(np.float64) * step * r) == coords).all(axis=1)
    origins = np.where(on_grid[:, None], cell.astype(np.float64) * step * r, coords.astype(np.float64))
    t_per_l0 = slide.mpp / thumb.mpp
    side = size * params.target_mpp / thumb.mpp
    x0, y0 = origins[:, 0] * t_per_l0, origins[:, 1] * t_per_l0
    tissue = box_fractions(thumb.mask, np.stack([x0, y0, x0 + side, y0 + side], axis=1))
    # Read blocks: runs of consecutive on-grid tiles in one block of the plain grid; off-grid tiles alone.
    tiles_per_block = max(1, params.block_px // step)
    if tiles_per_block >= 8:
        tiles_per_block -= tiles_per_block % 8
    block_key = np.where(on_grid[:, None], cell // tiles_per_block, -1 - np.arange(len(coords))[:, None])
    change = np.ones(len(coords), dtype=bool)
    change[1:] = (block_key[1:] != block_key[:-1]).any(axis=1)
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(coords))
    return PlacedTileGrid(
        grid=cell.astype(np.int32),
        coords=coords.astype(np.int64),
        tissue=tissue.astype(np.float32),
        blocks=[slice(int(s), int(e)) for s, e in zip(starts, ends)],
        shape=(cols, rows),
        l0_per_target=r,
        origins_l0=origins,
        on_grid=on_grid,
    )


# -- writing ----------------------------------------------------------------------------------------
def coords_attrs(meta: Mapping[str, Any], style: str = "trident") -> dict[str, Any]:
    """The ``coords`` attributes CLAM or TRIDENT read, for a slide of a medssl tile cache (its
    ``metadata``), plus ``medssl_*`` keys with the exact values (ignored by both tools).

    ``trident``: ``patch_size`` is the tile side at the target (exact); magnifications are ``10 / MPP``
    (exact ratios, not TRIDENT's nominal 20×/40×); ``patch_size_level0`` is the level-0 side rounded.
    ``clam``: ``patch_size`` counts level-0 pixels (``patch_level`` 0, the side rounded), and the
    magnifications are both the slide's, so TRIDENT reads the same footprint from the same file.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    mpp, target, size = float(meta["mpp"]), float(meta["target_mpp"]), int(meta["tile_size"])
    stride = int(meta.get("stride") or size)
    side = float(meta["tile_size_level0"])
    width, height = (int(v) for v in meta["dimensions"])
    attrs: dict[str, Any] = {
        "name": str(meta["slide_id"]),
        "patch_size_level0": round(side),
        "level0_magnification": 10.0 / mpp,
        "level0_width": width,
        "level0_height": height,
        "medssl_mpp": mpp,
        "medssl_target_mpp": target,
        "medssl_tile_size": size,
        "medssl_stride": stride,
        "medssl_tile_size_level0": side,
    }
    if style == "trident":
        attrs.update(patch_size=size, target_magnification=10.0 / target, overlap=size - stride)
    else:
        attrs.update(
            patch_size=round(side),
            patch_level=0,
            downsample=[1.0, 1.0],
            level_dim=[width, height],
            downsampled_level_dim=[width, height],
            target_magnification=10.0 / mpp,
            overlap=round((size - stride) * side / size),
        )
    return attrs
