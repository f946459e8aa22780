"""``medssl tile``: a cohort of whole-slide images into one resumable Zarr tile cache.

Python API::

    from medssl.preprocess import TilingParams, tile_slides
    summary = tile_slides(["slides/"], "cohort/", TilingParams(target_mpp=0.5, tile_size=224))
    summary.failed   # [] when every slide was tiled

Per slide: thumbnail and tissue mask at low resolution → the tile grid at the target MPP → pixels read
block by block from the pyramid level just finer than the target and resized exactly → written into a
staging group → QC picture → committed by atomic rename. Re-running skips committed slides whose source
file is unchanged and redoes everything else.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from medssl.cache import store as cache_mod
from medssl.cache.codecs import JpegCodec
from medssl.cache.raw import slab_writer
from medssl.errors import SlideError
from medssl.jobs import (
    DONE,
    SKIPPED,
    CacheItemWorker,
    Job,
    Result,
    RunSummary,
    Written,
    collect_jobs,
    manifest_path,
    run_jobs,
    select_shard,
)
from medssl.preprocess.dicom_wsi import canonical_slide_path, not_a_slide
from medssl.preprocess.regions import ANNOTATION_COLUMN, RegionParams
from medssl.preprocess.slides import SLIDE_SUFFIXES, Slide, slide_item_id, slide_source
from medssl.preprocess.stages import stage
from medssl.preprocess.tile_cuts import copy_tiles, tiles_array
from medssl.preprocess.tiling import Thumbnail, TileGrid, TilingParams, iter_tile_blocks, make_thumbnail, plan_grid
from medssl.viz.qc import save_png_atomically, tile_overlay

KIND = "slides"
CSV_EXTRA_COLUMNS = ("label", "stain", "mpp", "split", "case_id", ANNOTATION_COLUMN)
CODECS = ("raw", "zstd", "lz4", "jpeg")
#: A target finer than level 0 by more than this fraction would invent detail; it is refused.
MAX_UPSAMPLE = 0.05


@dataclass(frozen=True)
class StorageParams:
    """How tile pixels are stored. ``raw`` (uncompressed) is the default: histology compresses poorly
    losslessly (about 1.1-1.5×) and raw chunks read fastest; ``jpeg`` is about 8× smaller but lossy."""

    codec: str = "raw"
    jpeg_quality: int = 90
    chunk_tiles: int = 32  #: tiles per chunk (lossless) or per shard (jpeg, one tile per inner chunk)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if self.chunk_tiles < 1:
            raise ValueError(f"chunk_tiles must be at least 1, got {self.chunk_tiles}")

    def array_kwargs(self, tile_size: int, num_tiles: int | None = None) -> dict:
        """Zarr arguments of a ``tiles`` array. A slide with fewer than ``chunk_tiles`` tiles (a biopsy,
        a TMA core) gets one chunk of exactly its tiles: a padded 32-tile raw chunk would store eight
        times the pixels of a 4-tile slide."""
        rows = self.chunk_tiles if num_tiles is None else max(1, min(self.chunk_tiles, num_tiles))
        tile = (tile_size, tile_size, 3)
        if self.codec == "jpeg":
            return {
                "chunks": (1, *tile),
                "shards": (rows, *tile),
                "serializer": JpegCodec(quality=self.jpeg_quality),
                "compressors": None,
            }
        compressors = {
            "raw": None,
            "zstd": ZstdCodec(level=3),
            "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
        }[self.codec]
        # Every chunk is written, even an all-black one, so raw chunk files can be read directly.
        return {"chunks": (rows, *tile), "compressors": compressors, "config": {"write_empty_chunks": True}}


@dataclass
class TileSummary(RunSummary):
    """What one ``tile_slides`` run did."""

    @property
    def tiles(self) -> int:
        return sum(r.count for r in self.results if r.status in (DONE, SKIPPED))


def cache_params(params: TilingParams, storage: StorageParams, regions: RegionParams = RegionParams()) -> dict:
    """The parameters that decide a cache's content; a re-run must match them to resume."""
    return {"tiling": params.as_dict(), "storage": asdict(storage), **regions.recorded()}


def tile_slides(
    inputs: Sequence[str | Path],
    out: str | Path,
    params: TilingParams = TilingParams(),
    storage: StorageParams = StorageParams(),
    assume_mpp: float | None = None,
    workers: int = 1,
    threads: int = 2,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    regions: RegionParams = RegionParams(),
) -> TileSummary:
    """Tile every slide in ``inputs`` into the cache folder ``out``; see the module docstring.
    ``regions``: tiles at imported coordinates or restricted by annotations (docs/interop.md)."""
    out = Path(out)
    everything = collect_jobs(
        inputs,
        SLIDE_SUFFIXES,
        "slide_id",
        "path",
        CSV_EXTRA_COLUMNS,
        (ANNOTATION_COLUMN,),
        item_id=slide_item_id,
        canonical=canonical_slide_path,  # a DICOM series is one slide
    )
    regions = regions.for_jobs(everything)  # before sharding, so every shard records the same params
    jobs = select_shard(everything, shard)
    for job in jobs:
        cache_mod.check_item_id(job.item_id, str(job.path))
    cache_mod.open_for_writing(out, KIND, cache_params(params, storage, regions), overwrite=overwrite)
    manifest = manifest_path(out, shard)
    worker = SlideTiler(out, params, storage, assume_mpp, threads, regions)
    results = run_jobs(
        jobs,
        worker,
        manifest,
        workers=workers,
        unit="tiles",
        desc="slides",
        progress=progress,
        extra_fields=("label", "stain", "mpp", "read_level", "scale"),
    )
    return TileSummary(out=out, manifest=manifest, results=results)


@dataclass
class _PlannedSlide:
    """An open slide and what was planned for it, handed from ``prepare`` to ``write``."""

    slide: Slide
    attrs: dict
    thumb: Thumbnail
    grid: TileGrid


class SlideTiler(CacheItemWorker):
    """Tiles one slide into the cache; a picklable callable so worker processes can run it."""

    kind = KIND

    def __init__(
        self,
        out: Path,
        params: TilingParams,
        storage: StorageParams,
        assume_mpp: float | None,
        threads: int = 1,
        regions: RegionParams = RegionParams(),
    ):
        self.out = Path(out)
        self.regions = regions
        self.threads = threads
        self.params = params
        self.storage = storage
        self.assume_mpp = assume_mpp

    def __call__(self, job: Job, progress: Callable[[int], None]) -> Result:
        reason = not_a_slide(job.path)  # e.g. a CT image or a report among a slide's DICOM files
        if reason:
            return Result(job.item_id, str(job.path), SKIPPED, f"{job.path}: {reason}")
        return super().__call__(job, progress)

    def manifest_extra(self, job: Job) -> dict:
        return {k: job.fields[k] for k in ("label", "stain") if k in job.fields}

    def source(self, job: Job) -> dict:
        if not job.path.exists():
            raise SlideError(f"{job.path}: file not found")
        return {**slide_source(job.path), **self.regions.fingerprint(job)}

    def skipped_count(self, previous: dict, source: dict) -> int:
        return previous["num_tiles"]

    @contextmanager
    def prepare(self, job: Job, source: dict) -> Iterator[_PlannedSlide]:
        """The slide opened and planned (thumbnail, tissue, grid); it stays open until committed."""
        mpp_override = _parse_mpp(job)
        with Slide(job.path, mpp_override=mpp_override, fallback_mpp=self.assume_mpp) as slide:
            yield _PlannedSlide(slide, *self._plan(slide, job, source))

    def write(self, group, job: Job, planned: _PlannedSlide, progress: Callable[[int], None]) -> Written:
        slide, attrs, grid = planned.slide, planned.attrs, planned.grid
        self._write(group, slide, job, planned.thumb, grid, attrs, progress)
        extra = {"mpp": f"{slide.mpp:.5g}", "read_level": attrs["read_level"], "scale": f"{attrs['scale']:.5g}"}
        return Written(attrs, len(grid), extra)

    # -- steps --------------------------------------------------------------------------------
    def _plan(self, slide: Slide, job: Job, source: dict) -> tuple[dict, Thumbnail, TileGrid]:
        p = self.params
        if p.target_mpp < slide.mpp * (1 - MAX_UPSAMPLE):
            raise SlideError(
                f"{job.path}: target {p.target_mpp} µm/px is finer than the slide's level 0 "
                f"({slide.mpp:.4g} µm/px); choose a coarser --mpp"
            )
        with stage("thumbnail"):
            thumb = make_thumbnail(slide, p.tissue)
        placed = self.regions.place(job, slide, thumb, p)  # --coords: every tile given, none dropped
        if placed is not None:
            grid, region_attrs = placed
        else:
            with stage("plan"):
                grid, region_attrs, thumb = self._plan_on_tissue(slide, job, thumb)
        level = slide.level_for(p.target_mpp)
        attrs = {
            "slide_id": job.item_id,
            "source": source,
            "vendor": slide.vendor,
            "reader": slide.reader,
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "objective_power": slide.objective_power,
            "dimensions": list(slide.dimensions),
            "level_count": slide.level_count,
            "read_level": level,
            "read_level_mpp": slide.level_mpp(level),
            "target_mpp": p.target_mpp,
            "scale": p.target_mpp / slide.level_mpp(level),
            "tile_size": p.tile_size,
            "stride": p.step,
            "tile_size_level0": p.tile_size * grid.l0_per_target,
            "grid_shape": list(grid.shape),
            "num_tiles": len(grid),
            "thumbnail_mpp": thumb.mpp,
            "tissue_threshold": thumb.threshold,
            "tissue_fraction_slide": float(thumb.mask.mean()),
            "pen_fraction": thumb.pen_fraction,
            **region_attrs,
            **{k: job.fields[k] for k in ("label", "stain", "split", "case_id") if k in job.fields},
        }
        return attrs, thumb, grid

    def _plan_on_tissue(self, slide: Slide, job: Job, thumb: Thumbnail) -> tuple[TileGrid, dict, Thumbnail]:
        """The grid of tiles with enough tissue (inside or outside the annotations, if any)."""
        p = self.params
        if not thumb.mask.any():
            raise SlideError(
                f"{job.path}: no tissue found (saturation threshold {thumb.threshold:.1f}); "
                "lower --min-saturation if this slide is faintly stained"
            )
        thumb, region_attrs = self.regions.restrict(job, slide, thumb)
        grid = plan_grid(slide, thumb, p)
        if grid.shape[0] == 0 or grid.shape[1] == 0:
            raise SlideError(f"{job.path}: slide is smaller than one {p.tile_size}px tile at {p.target_mpp} µm/px")
        if len(grid) == 0:
            raise SlideError(
                f"{job.path}: tissue found but no tile has tissue fraction >= {p.min_tissue}; lower --min-tissue"
            )
        return grid, region_attrs, thumb

    def _write(self, group, slide: Slide, job: Job, thumb: Thumbnail, grid: TileGrid, attrs: dict, progress) -> None:
        p = self.params
        small = {"coords": grid.coords, "grid": grid.grid, "tissue": grid.tissue}
        masks = {"tissue_mask": thumb.mask, "annotation_mask": thumb.region, "pen_mask": thumb.ink}
        present = {name: mask for name, mask in masks.items() if mask is not None}
        cache_mod.write_small_arrays(group, {**small, "thumbnail": thumb.rgb, **present})
        tiles = group.create_array(
            "tiles",
            shape=(len(grid), p.tile_size, p.tile_size, 3),
            dtype="uint8",
            **self.storage.array_kwargs(p.tile_size, len(grid)),
        )
        blocks = iter_tile_blocks(slide, grid, p, attrs["read_level"], self.threads)
        _stream_tiles(tiles, blocks, min(self.storage.chunk_tiles, len(grid)), progress)
        with stage("qc"):
            boxes = _thumbnail_boxes(grid, p, thumb.mpp, slide.mpp)
            picture = tile_overlay(thumb.rgb, thumb.mask, boxes, region=thumb.region, ink=thumb.ink)
            save_png_atomically(picture, self.out / "qc" / f"{job.item_id}.png")


def _parse_mpp(job: Job) -> float | None:
    text = job.fields.get("mpp")
    if text in (None, ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise SlideError(f"{job.path}: mpp {text!r} in the CSV manifest is not a number") from None


def _thumbnail_boxes(grid: TileGrid, params: TilingParams, thumb_mpp: float, slide_mpp: float) -> np.ndarray:
    scale = slide_mpp / thumb_mpp
    side = params.tile_size * grid.l0_per_target * scale
    x0, y0 = grid.coords[:, 0] * scale, grid.coords[:, 1] * scale
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def _stream_tiles(array: zarr.Array, blocks, chunk: int, progress: Callable[[int], None]) -> None:
    """Write tile blocks into ``array`` in chunk-aligned slabs from a background thread.

    OpenSlide decoding (in the caller) and file writes (here) both release the GIL, so they overlap;
    whole chunks per write keep Zarr from rewriting any chunk twice.
    """
    slab_tiles = chunk * max(1, math.ceil(256 / chunk))  # about 256 tiles per write
    if array.shape[0] <= slab_tiles:  # a small slide: one write, no thread to start
        pixels = np.concatenate([tiles_array(b) for b in blocks]) if array.shape[0] else np.empty(array.shape, np.uint8)
        if len(pixels) != array.shape[0]:
            raise RuntimeError(f"wrote {len(pixels)} tiles, expected {array.shape[0]}")
        with stage("write"):
            slab_writer(array)(0, pixels)
        progress(len(pixels))
        return
    slabs: queue.Queue = queue.Queue(maxsize=2)
    spare: queue.SimpleQueue = queue.SimpleQueue()  # written slabs, reused: fresh pages cost a fault each
    failure: list[BaseException] = []
    write = slab_writer(array)

    def writer() -> None:
        try:
            while (item := slabs.get()) is not None:
                start, data = item
                with stage("write"):
                    write(start, data)
                spare.put(data)
                progress(len(data))
        except BaseException as exc:  # surfaced in the caller
            failure.append(exc)
            while slabs.get() is not None:  # keep the producer from blocking
                pass

    thread = threading.Thread(target=writer, name="medssl-tile-writer", daemon=True)
    thread.start()
    buffer = np.empty((slab_tiles, *array.shape[1:]), dtype=np.uint8)
    filled, written = 0, 0
    try:
        for block in blocks:
            offset = 0
            while offset < len(block):
                take = min(len(block) - offset, slab_tiles - filled)
                with stage("copy_slab"):
                    copy_tiles(block, buffer[filled : filled + take], offset)  # cut straight into the slab
                filled, offset = filled + take, offset + take
                if filled == slab_tiles:
                    slabs.put((written, buffer))
                    written += filled
                    buffer, filled = (np.empty_like(buffer) if spare.empty() else spare.get()), 0
            if failure:
                break
        if filled and not failure:
            slabs.put((written, buffer[:filled]))
            written += filled
    finally:
        slabs.put(None)
        thread.join()
    if failure:
        raise failure[0]
    if written != array.shape[0]:
        raise RuntimeError(f"wrote {written} tiles, expected {array.shape[0]}")
