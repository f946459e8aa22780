"""The tile grid at a target physical resolution, and block-wise extraction of its pixels.

A grid lives in *target pixels* (pixels at the target MPP); tile ``k`` covers target pixels
``[gx*stride, gx*stride + tile_size)`` and is stored with its level-0 top-left corner. Pixels are read
in blocks of many tiles: one OpenSlide read and one exact resize per block, so each source JPEG tile
is decoded about once instead of once per overlapping output tile, and memory is bounded by the block
size whatever the slide size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from medssl.preprocess.slides import RESAMPLE_FILTERS, Slide
from medssl.preprocess.stages import stage
from medssl.preprocess.tile_cuts import TileCuts, tiles_array
from medssl.preprocess.tissue import TissueParams, box_fractions, find_tissue


@dataclass(frozen=True)
class TilingParams:
    """What decides the tiles' pixels; recorded in the cache and compared on every re-run."""

    target_mpp: float = 0.5
    tile_size: int = 224
    stride: int | None = None  #: target pixels between tile origins; None = tile_size (no overlap)
    min_tissue: float = 0.5  #: keep tiles whose tissue fraction is at least this
    resample: str = "box"  #: area averaging: no aliasing, and exact integer reductions are fast
    block_px: int = 2048  #: side of a read block in target pixels (memory vs. re-decoding at edges)
    tissue: TissueParams = TissueParams()

    def __post_init__(self) -> None:
        if self.target_mpp <= 0:
            raise ValueError(f"target MPP must be positive, got {self.target_mpp}")
        if self.tile_size < 8:
            raise ValueError(f"tile size must be at least 8 pixels, got {self.tile_size}")
        if self.stride is not None and not 0 < self.stride:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min tissue fraction must be in [0, 1], got {self.min_tissue}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {self.resample!r}")

    @property
    def step(self) -> int:
        return self.stride or self.tile_size

    def as_dict(self) -> dict:
        return {**asdict(self), "tissue": self.tissue.as_dict()}


@dataclass
class Thumbnail:
    """A low-resolution RGB view of the whole slide and its tissue mask, at ``mpp`` µm/px."""

    rgb: np.ndarray
    mask: np.ndarray
    mpp: float
    threshold: float
    region: np.ndarray | None = None  #: annotated region the mask was restricted by (``--annotations``)
    ink: np.ndarray | None = None  #: marker-ink mask (excluded from ``mask``)
    pen_fraction: float = 0.0  #: ink pixels / (tissue or ink) pixels


@dataclass
class TileGrid:
    """The kept tiles of one slide, in extraction order (block by block, row-major inside a block)."""

    grid: np.ndarray  #: int32 [N, 2] tile column, row in the target grid
    coords: np.ndarray  #: int64 [N, 2] level-0 (x, y) of each tile's top-left corner
    tissue: np.ndarray  #: float32 [N] tissue fraction
    blocks: list[slice]  #: runs of consecutive tiles that share one read block
    shape: tuple[int, int]  #: grid (columns, rows) before filtering
    l0_per_target: float  #: level-0 pixels per target pixel

    def __len__(self) -> int:
        return len(self.grid)

    def read(self, slide: Slide, params: TilingParams, level: int, block: slice) -> np.ndarray | TileCuts:
        """Pixels of the tiles ``self[block]`` (:func:`read_block_cuts`: copied out by their consumer,
        :func:`medssl.preprocess.tile_cuts.copy_tiles`); grids placed otherwise override it."""
        return read_block_cuts(slide, self, params, level, block)


def make_thumbnail(slide: Slide, tissue: TissueParams, block_px: int = 4096) -> Thumbnail:
    """Read the whole slide at ``tissue.mask_mpp`` block by block (memory flat in slide size)."""
    mpp = tissue.mask_mpp
    w0, h0 = slide.dimensions
    scale = mpp / slide.mpp  # level-0 pixels per thumbnail pixel
    tw, th = max(1, int(w0 / scale)), max(1, int(h0 / scale))
    level = slide.level_for(mpp)
    rgb = np.empty((th, tw, 3), dtype=np.uint8)
    for y in range(0, th, block_px):
        for x in range(0, tw, block_px):
            bw, bh = min(block_px, tw - x), min(block_px, th - y)
            rgb[y : y + bh, x : x + bw] = slide.read_resampled(
                level, (x * scale, y * scale), (bw * scale, bh * scale), (bw, bh), "box"
            )
    found = find_tissue(rgb, tissue)
    return Thumbnail(rgb, found.mask, mpp, found.threshold, ink=found.ink, pen_fraction=found.pen_fraction)


def plan_grid(slide: Slide, thumb: Thumbnail, params: TilingParams) -> TileGrid:
    """Every full tile inside the slide, its tissue fraction, and the kept ones grouped by read block."""
    w0, h0 = slide.dimensions
    l0_per_target = params.target_mpp / slide.mpp
    wt, ht = w0 / l0_per_target, h0 / l0_per_target  # slide extent in target pixels
    step, size = params.step, params.tile_size
    cols = int((wt - size) // step) + 1 if wt >= size else 0
    rows = int((ht - size) // step) + 1 if ht >= size else 0
    gx, gy = np.meshgrid(np.arange(cols), np.arange(rows))
    gx, gy = gx.ravel(), gy.ravel()
    # Tile boxes in thumbnail pixels, for exact tissue fractions.
    t_per_target = params.target_mpp / thumb.mpp
    x0, y0 = gx * step * t_per_target, gy * step * t_per_target
    boxes = np.stack([x0, y0, x0 + size * t_per_target, y0 + size * t_per_target], axis=1)
    fraction = box_fractions(thumb.mask, boxes) if len(boxes) else np.zeros(0)
    keep = fraction >= max(params.min_tissue, 1e-9)
    gx, gy, fraction = gx[keep], gy[keep], fraction[keep]
    # Order by read block, then row-major inside the block. Blocks span a multiple of 8 tiles so that,
    # for the usual power-of-two tile and source-tile sizes, block edges fall on source-tile edges and
    # no source tile is decoded for two blocks.
    tiles_per_block = max(1, params.block_px // step)
    if tiles_per_block >= 8:
        tiles_per_block -= tiles_per_block % 8
    bx, by = gx // tiles_per_block, gy // tiles_per_block
    order = np.lexsort((gx, gy, bx, by))
    gx, gy, fraction, bx, by = gx[order], gy[order], fraction[order], bx[order], by[order]
    block_id = by * (cols // tiles_per_block + 1) + bx
    starts = np.flatnonzero(np.diff(block_id, prepend=-1)) if len(block_id) else np.zeros(0, int)
    ends = np.append(starts[1:], len(block_id))
    coords = np.stack([gx, gy], axis=1).astype(np.float64) * step * l0_per_target
    return TileGrid(
        grid=np.stack([gx, gy], axis=1).astype(np.int32),
        coords=np.round(coords).astype(np.int64),
        tissue=fraction.astype(np.float32),
        blocks=[slice(int(s), int(e)) for s, e in zip(starts, ends)],
        shape=(cols, rows),
        l0_per_target=l0_per_target,
    )


def iter_tile_blocks(
    slide: Slide, grid: TileGrid, params: TilingParams, level: int, threads: int = 1
) -> Iterator[np.ndarray | TileCuts]:
    """Yield ``uint8 [n, T, T, 3]`` tile pixels (or their :class:`TileCuts`), one per read block, in grid order.

    With ``threads > 1`` several blocks are decoded at once (JPEG decoding and resizing release the
    GIL); at most ``threads + 1`` blocks are in memory.
    """
    if threads <= 1 or len(grid.blocks) <= 1:  # one block (a biopsy, a TMA core): no pool to start
        for block in grid.blocks:
            yield grid.read(slide, params, level, block)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="medssl-read") as pool:
        pending: deque = deque()
        for block in grid.blocks:
            pending.append(pool.submit(grid.read, slide, params, level, block))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_block(slide: Slide, grid: TileGrid, params: TilingParams, level: int, block: slice) -> np.ndarray:
    """Pixels of the tiles ``grid[block]``: one read and one resize of their bounding box, then cuts."""
    cuts = read_block_cuts(slide, grid, params, level, block)
    with stage("cut"):
        return tiles_array(cuts)


def read_block_cuts(slide: Slide, grid: TileGrid, params: TilingParams, level: int, block: slice) -> TileCuts:
    """:func:`read_block` with the tiles left in the region, to be cut straight into their destination."""
    step, size, r = params.step, params.tile_size, grid.l0_per_target
    gx, gy = grid.grid[block, 0], grid.grid[block, 1]
    # Bounding box of this block's kept tiles, in target pixels.
    x_min, y_min = int(gx.min()) * step, int(gy.min()) * step
    x_max, y_max = int(gx.max()) * step + size, int(gy.max()) * step + size
    x0, y0 = gx * step * r, gy * step * r
    region = slide.read_resampled(
        level,
        origin=(x_min * r, y_min * r),
        size_l0=((x_max - x_min) * r, (y_max - y_min) * r),
        out_size=(x_max - x_min, y_max - y_min),
        resample=params.resample,
        needed_l0=np.stack([x0, y0, x0 + size * r, y0 + size * r], axis=1),
    )
    return TileCuts(region, gx * step - x_min, gy * step - y_min, size)
