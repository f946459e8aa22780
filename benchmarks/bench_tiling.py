"""Throughput and memory of ``medssl tile`` on a large synthetic 40× slide, against a per-tile
OpenSlide baseline and a JPEG-decoding ceiling.

Usage::

    python benchmarks/bench_tiling.py                 # 40960 × 40960 slide, all modes
    python benchmarks/bench_tiling.py --size 8192     # quick check
    python benchmarks/bench_tiling.py --skip-memory   # no subprocess memory runs
    python benchmarks/bench_tiling.py --size 16384 --skip-memory --one-thread-only   # per-core figures only

The slide is made once by :mod:`medssl.synthetic.slides` (real IHC texture on glass, JPEG tiles of
256 px, levels at downsamples 1, 4, 16, 64, Aperio description with MPP 0.25) and cached under
``--work-dir``. It has no 20× level, so a 0.5 µm/px target is read from level 0 and downsampled by 2,
as on most real 40× SVS files. Every mode runs single-process on the same (warm, page-cached) file;
"wall" is ``time.perf_counter`` and "cpu" is ``time.process_time`` (all threads of this process), so
``tiles_per_cpu_s`` is throughput per core actually used.

Modes, and why each exists:

``medssl``
    What we ship: ``tile_slides([slide], out, TilingParams(target_mpp, tile_size), workers=1, threads=T)``
    into a fresh folder, end to end — thumbnail, tissue mask, grid, block reads, exact resize, Zarr writes of
    raw uint8 tiles to disk, QC picture, commit. ``N`` is the number of tiles it keeps. It runs twice:
    with one read thread (``medssl_1_thread``: the per-core figure compared with the single-threaded
    ceiling) and with ``--threads`` read threads (``medssl``: what one slide gets on this machine).
    A third run forces OpenSlide reads instead of direct TIFF decoding
    (``medssl_1_thread_openslide_reads``: what formats other than tiled TIFF/SVS get).

``baseline``
    The way most pipelines do it (CLAM, histolab and similar): one ``OpenSlide.read_region`` per tile at the
    read level medssl chose, covering the tile's level-0 footprint, ``convert("RGB")``, a PIL box (area)
    resize to ``tile_size`` (the same filter medssl uses by default) and ``np.asarray`` into a batch buffer.
    It uses exactly the tile coordinates medssl kept (read back from the cache), and it skips thumbnailing,
    tissue detection and **writes nothing to disk** — all of which favour the baseline.

``ceiling``
    How fast the pixels could possibly come off the file on one core: every JPEG source tile of the
    read level is read (``os.pread``) and decoded once with the page's own decoder
    (``tifffile``'s ``page.decode`` with the page's JPEG tables, i.e. libjpeg-turbo via imagecodecs),
    one tile at a time — never the whole level in memory — with no resize, no copy and no write.
    It is reported as output tiles per second two ways: ``N / seconds to decode all source tiles of
    the level`` (the literal ceiling), and ``N / seconds to decode only the source tiles the kept
    tiles touch`` (stricter, since medssl reads tissue only).

``memory`` (unless ``--skip-memory``)
    ``medssl tile`` in a fresh Python subprocess on the big slide and on one with a quarter of the
    area (``size/2``, same layout parameters), reporting the child's peak RSS (``ru_maxrss``), to
    show memory does not grow with slide size.

Progress goes to stderr; one JSON object with every figure goes to stdout at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image

from medssl.cache import SlideCache
from medssl.preprocess import TilingParams, stages, tile_slides
from medssl.synthetic import slides as synthetic_slides
from medssl.synthetic.slides import random_layout, write_slide

SLIDE_MPP = 0.25
DOWNSAMPLES = (1, 4, 16, 64)
LAYOUT = {"n_pieces": 4, "coverage": 0.35, "seed": 0}
PACKAGES = ("openslide-bin", "openslide-python", "zarr", "numpy", "pillow", "tifffile", "imagecodecs")
BATCH = 256  #: baseline batch buffer, in tiles


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- timing ---------------------------------------------------------------------------------------
@dataclass
class Timing:
    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def timed() -> Iterator[Timing]:
    """Wall (``perf_counter``) and process CPU (``process_time``, all threads) seconds of the block."""
    result = Timing()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result.wall_s = time.perf_counter() - wall0
        result.cpu_s = time.process_time() - cpu0


def rates(tiles: int, timing: Timing) -> dict:
    return {
        "tiles": tiles,
        "wall_s": round(timing.wall_s, 3),
        "cpu_s": round(timing.cpu_s, 3),
        "tiles_per_s": round(tiles / timing.wall_s, 1),
        "tiles_per_cpu_s": round(tiles / timing.cpu_s, 1),
    }


# -- the synthetic slide ---------------------------------------------------------------------------
def slide_path(work_dir: Path, size: int) -> Path:
    return work_dir / "slides" / f"synthetic-{size}.svs"


def _generation_record(size: int) -> dict:
    """What decides the slide's bytes, including the generator's source (it may change under us)."""
    generator = hashlib.sha256(Path(synthetic_slides.__file__).read_bytes()).hexdigest()[:16]
    return {
        "size": size,
        "layout": LAYOUT,
        "mpp": SLIDE_MPP,
        "downsamples": list(DOWNSAMPLES),
        "vendor": "aperio",
        "generator_sha256": generator,
    }


def ensure_slide(work_dir: Path, size: int) -> Path:
    """The cached synthetic slide of ``size``², generated (atomically) if absent or made differently."""
    path = slide_path(work_dir, size)
    record_path = path.with_suffix(".json")
    record = _generation_record(size)
    if path.exists() and record_path.exists() and json.loads(record_path.read_text()) == record:
        with openslide.OpenSlide(str(path)) as osr:
            if osr.dimensions == (size, size):
                log(f"reusing {path}")
                return path
    log(f"generating {path} ({size}² level 0) ...")
    partial = path.with_name(path.stem + ".partial.svs")
    with timed() as t:
        layout = random_layout(size, size, **LAYOUT)
        write_slide(partial, layout, mpp=SLIDE_MPP, downsamples=DOWNSAMPLES, vendor="aperio")
    os.replace(partial, path)
    record_path.write_text(json.dumps(record))
    log(f"generated {path} in {t.wall_s:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")
    return path


# -- mode 1: medssl tile ---------------------------------------------------------------------------
def run_medssl(
    path: Path, out: Path, params: TilingParams, threads: int, direct: bool = True, split: bool = False
) -> tuple[dict, str]:
    """``direct=False`` forces OpenSlide reads (what NDPI, MRXS and other non-TIFF formats get);
    ``split=True`` adds the per-stage CPU split (:mod:`medssl.preprocess.stages`)."""
    import medssl.preprocess.slides as slides_module

    shutil.rmtree(out, ignore_errors=True)
    log(f"medssl tile (threads={threads}, direct={direct}) ...")
    vendors = slides_module.DIRECT_VENDORS
    slides_module.DIRECT_VENDORS = vendors if direct else ()
    try:
        with stages.recording() if split else nullcontext({}) as totals, timed() as t:
            summary = tile_slides([path], out, params, workers=1, threads=threads, overwrite=True, progress=False)
    finally:
        slides_module.DIRECT_VENDORS = vendors
    if summary.failed:
        raise RuntimeError(f"medssl tile failed: {summary.failed[0].reason}")
    figures = rates(summary.tiles, t)
    if split:
        figures["split"] = stage_split(totals, t.cpu_s, summary.tiles)
    log(f"medssl: {figures}")
    return figures, summary.results[0].item_id


#: Stages in pipeline order, with what each one covers (names as marked in the medssl code).
STAGES = {
    "thumbnail": "thumbnail read + tissue mask",
    "plan": "tile grid and tissue fractions",
    "decode": "pread + JPEG decode of level tiles (kept tiles only)",
    "reduce": "exact box reduction / resize",
    "copy_region": "decoded or reduced pixels into the block region, white fill",
    "rgb_pack": "RGBX -> RGB packing of the region",
    "cut": "tiles cut out of the region into their own array (grids that read their own tiles)",
    "copy_slab": "tiles cut from the block region straight into the write slab",
    "write": "chunk writes in the writer thread (work Zarr does on its own threads is under other)",
    "qc": "QC overlay PNG",
}


def stage_split(totals: dict[str, float], cpu_s: float, tiles: int) -> dict:
    """CPU seconds, share of the run's CPU and microseconds per output tile, for each stage; what no
    stage claims (opening and probing the slide, Zarr setup, commit, Python glue) is ``other``."""
    names = list(STAGES) + sorted(set(totals) - set(STAGES))
    seconds = {name: totals.get(name, 0.0) for name in names}
    seconds["other"] = max(0.0, cpu_s - sum(seconds.values()))
    return {
        name: {
            "cpu_s": round(value, 3),
            "share": round(value / cpu_s, 3) if cpu_s else 0.0,
            "us_per_tile": round(1e6 * value / tiles, 1) if tiles else 0.0,
        }
        for name, value in seconds.items()
    }


# -- mode 2: per-tile OpenSlide baseline -----------------------------------------------------------
def run_baseline(path: Path, coords: np.ndarray, level: int, size_l0: float, tile_size: int) -> dict:
    """One read_region + RGB + box resize per tile, into a reused batch buffer; no disk write."""
    log(f"baseline: {len(coords)} read_region calls ...")
    batch = np.empty((BATCH, tile_size, tile_size, 3), dtype=np.uint8)
    checksum = 0
    with openslide.OpenSlide(str(path)) as osr, timed() as t:
        ds = osr.level_downsamples[level]
        read = math.ceil(size_l0 / ds)
        for i, (x, y) in enumerate(coords):
            region = osr.read_region((int(x), int(y)), level, (read, read)).convert("RGB")
            batch[i % BATCH] = np.asarray(region.resize((tile_size, tile_size), Image.Resampling.BOX))
            if i % BATCH == BATCH - 1:
                checksum += int(batch[:, 0, 0, 0].sum())  # touch the batch, as a consumer would
    figures = rates(len(coords), t)
    figures["writes_to_disk"] = False
    log(f"baseline: {figures}")
    return figures


# -- mode 3: JPEG decoding ceiling -----------------------------------------------------------------
def touched_source_tiles(
    coords: np.ndarray, size_l0: float, downsample: float, source_tile: tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """Sorted unique indices (row-major) of the level's source tiles that the kept tiles overlap."""
    th, tw = source_tile
    rows, cols = grid
    x0, y0 = coords[:, 0] / downsample, coords[:, 1] / downsample
    x1, y1 = (coords[:, 0] + size_l0) / downsample, (coords[:, 1] + size_l0) / downsample
    touched: set[int] = set()
    for a, b, c, d in zip(x0, y0, x1, y1):
        cx = range(int(a // tw), min(cols, math.ceil(c / tw)))
        cy = range(int(b // th), min(rows, math.ceil(d / th)))
        touched.update(r * cols + q for r in cy for q in cx)
    return np.array(sorted(touched), dtype=np.int64)


def decode_tiles(path: Path, page_index: int, indices: np.ndarray | None) -> tuple[int, Timing]:
    """Read and decode source tiles of one TIFF page one at a time (all of them if ``indices`` is None)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        offsets, counts = page.dataoffsets, page.databytecounts
        decode, tables = page.decode, page.jpegtables
        todo = range(len(offsets)) if indices is None else indices
        fd = os.open(path, os.O_RDONLY)
        try:
            with timed() as t:
                for k in todo:
                    data = os.pread(fd, counts[k], offsets[k])
                    tile, _, _ = decode(data, int(k), jpegtables=tables)
        finally:
            os.close(fd)
    return len(todo), t


def run_ceiling(path: Path, level: int, coords: np.ndarray, size_l0: float, n_out: int, medssl_rate: float) -> dict:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]  # one page per level, in pyramid order
        if page.compression != tifffile.COMPRESSION.JPEG or not page.is_tiled:
            raise RuntimeError(f"level {level} is not JPEG-tiled")
        source_tile = (page.tilelength, page.tilewidth)
        grid = (math.ceil(page.imagelength / page.tilelength), math.ceil(page.imagewidth / page.tilewidth))
        downsample = tif.pages[0].imagewidth / page.imagewidth
    touched = touched_source_tiles(coords, size_l0, downsample, source_tile, grid)
    log(f"ceiling: decoding all {grid[0] * grid[1]} source tiles of level {level} ...")
    n_all, t_all = decode_tiles(path, level, None)
    log(f"ceiling: decoding the {len(touched)} source tiles the kept tiles touch ...")
    n_touched, t_touched = decode_tiles(path, level, touched)
    all_rate = n_out / t_all.wall_s
    touched_rate = n_out / t_touched.wall_s
    figures = {
        "source_tile": list(source_tile),
        "all": {
            "source_tiles": n_all,
            "wall_s": round(t_all.wall_s, 3),
            "cpu_s": round(t_all.cpu_s, 3),
            "source_tiles_per_s": round(n_all / t_all.wall_s, 1),
            "output_tiles_per_s": round(all_rate, 1),
        },
        "touched": {
            "source_tiles": n_touched,
            "wall_s": round(t_touched.wall_s, 3),
            "cpu_s": round(t_touched.cpu_s, 3),
            "source_tiles_per_s": round(n_touched / t_touched.wall_s, 1),
            "output_tiles_per_s": round(touched_rate, 1),
        },
        "medssl_1_thread_fraction_of_all_ceiling": round(medssl_rate / all_rate, 3),
        "medssl_1_thread_fraction_of_touched_ceiling": round(medssl_rate / touched_rate, 3),
    }
    log(f"ceiling: {figures}")
    return figures


def targets(single: dict, baseline: dict, ceiling: dict) -> dict:
    """The one-thread run against the per-tile baseline (per core) and the stricter decode bound.

    CPU-second rates are the robust ones on a shared machine: they do not count time spent waiting
    for other processes. The decode bound is single-threaded, so its CPU and wall rates agree when idle.
    """
    touched = ceiling["touched"]
    bound_per_cpu_s = single["tiles"] / touched["cpu_s"]
    return {
        "per_core_ratio_vs_baseline": round(single["tiles_per_cpu_s"] / baseline["tiles_per_cpu_s"], 2),
        "wall_ratio_vs_baseline_1_thread": round(single["tiles_per_s"] / baseline["tiles_per_s"], 2),
        "share_of_touched_decode_bound_per_cpu": round(single["tiles_per_cpu_s"] / bound_per_cpu_s, 3),
        "share_of_touched_decode_bound_wall": round(single["tiles_per_s"] / touched["output_tiles_per_s"], 3),
        "goals": {"per_core_ratio_vs_baseline": 3.0, "share_of_touched_decode_bound": 0.7},
    }


def print_summary(report: dict) -> None:
    """The figures a person reads first, to stderr (stdout stays one JSON object)."""
    single, ratios = report["medssl_1_thread"], report["targets"]
    log(
        f"one thread: {single['tiles']} tiles, {single['tiles_per_s']} tiles/s, "
        f"{single['tiles_per_cpu_s']} tiles per CPU-s"
    )
    log(f"{'stage':<12} {'CPU s':>8} {'share':>7} {'µs/tile':>9}  what")
    for name, row in single.get("split", {}).items():
        log(
            f"{name:<12} {row['cpu_s']:>8.3f} {100 * row['share']:>6.1f}% {row['us_per_tile']:>9.1f}  "
            f"{STAGES.get(name, 'slide open/probe, Zarr setup, commit, glue')}"
        )
    log(
        f"per core vs per-tile baseline: {ratios['per_core_ratio_vs_baseline']}× (goal 3×); "
        f"share of the touched-tile decode bound: {100 * ratios['share_of_touched_decode_bound_per_cpu']:.0f} % "
        f"per CPU-s, {100 * ratios['share_of_touched_decode_bound_wall']:.0f} % wall (goal 70 %)"
    )


# -- mode 4: memory in a fresh process -------------------------------------------------------------
CHILD = r"""
import json, resource, sys, time
def hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from medssl.preprocess import TilingParams, stages, tile_slides
after_import = hwm_mib()
slide, out, mpp, size = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
summary = tile_slides([slide], out, TilingParams(mpp, size), workers=1, overwrite=True, progress=False)
assert not summary.failed, summary.failed
print(json.dumps({
    "tiles": summary.tiles,
    "wall_s": round(time.perf_counter() - t, 3),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "rss_after_imports_mib": round(after_import, 1),
}))
"""


def measure_memory(path: Path, out: Path, params: TilingParams) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    log(f"memory: medssl tile {path.name} in a subprocess ...")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(out), str(params.target_mpp), str(params.tile_size)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    with openslide.OpenSlide(str(path)) as osr:
        w, h = osr.dimensions
    figures["level0_pixels"] = w * h
    shutil.rmtree(out, ignore_errors=True)
    log(f"memory: {figures}")
    return figures


# -- report ----------------------------------------------------------------------------------------
def machine() -> dict:
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "openslide_library": openslide.__library_version__,
        "medssl_git": medssl_revision(),
        "packages": versions,
    }


def medssl_revision() -> str | None:
    """``git describe --always --dirty`` of the medssl checkout, if it is one."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(synthetic_slides.__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def slide_info(path: Path, meta: dict, size: int) -> dict:
    with openslide.OpenSlide(str(path)) as osr:
        levels = [list(d) for d in osr.level_dimensions]
    return {
        "path": str(path),
        "size": size,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "levels": levels,
        "downsamples": list(DOWNSAMPLES),
        "mpp": meta["mpp"],
        "target_mpp": meta["target_mpp"],
        "read_level": meta["read_level"],
        "scale": meta["scale"],
        "tile_size": meta["tile_size"],
        "tile_size_level0": meta["tile_size_level0"],
        "grid_shape": meta["grid_shape"],
        "tissue_fraction": round(meta["tissue_fraction_slide"], 4),
        "generator_sha256": json.loads(path.with_suffix(".json").read_text())["generator_sha256"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", type=int, default=40960, help="level-0 side of the synthetic slide, pixels")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/medssl-bench"))
    parser.add_argument("--target-mpp", type=float, default=0.5)
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="read threads for the second medssl run")
    parser.add_argument("--skip-memory", action="store_true", help="skip the subprocess peak-RSS runs")
    parser.add_argument(
        "--one-thread-only",
        action="store_true",
        help="skip the OpenSlide-reads and multi-thread medssl runs (for quick per-core comparisons)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    host = machine()  # before anything runs: the checkout may change under a long run
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    params = TilingParams(target_mpp=args.target_mpp, tile_size=args.tile_size)
    path = ensure_slide(work, args.size)
    out = work / "out-medssl"

    single, slide_id = run_medssl(path, out, params, threads=1, split=True)
    cache = SlideCache(out)
    meta, coords = cache.metadata(slide_id), cache.coords(slide_id)
    level, size_l0 = int(meta["read_level"]), float(meta["tile_size_level0"])
    via_openslide = medssl_figures = None
    if not args.one_thread_only:
        via_openslide, _ = run_medssl(path, work / "out-medssl-openslide", params, threads=1, direct=False)
        medssl_figures, _ = run_medssl(path, work / "out-medssl-threads", params, threads=args.threads)
        medssl_figures["threads"] = args.threads
    baseline = run_baseline(path, coords, level, size_l0, args.tile_size)
    if medssl_figures is not None:
        medssl_figures["speedup_over_baseline_wall"] = round(medssl_figures["tiles_per_s"] / baseline["tiles_per_s"], 2)
        medssl_figures["speedup_over_baseline_per_cpu"] = round(
            medssl_figures["tiles_per_cpu_s"] / baseline["tiles_per_cpu_s"], 2
        )
    single["speedup_over_baseline_wall"] = round(single["tiles_per_s"] / baseline["tiles_per_s"], 2)
    ceiling = run_ceiling(path, level, coords, size_l0, len(coords), single["tiles_per_s"])
    ratios = targets(single, baseline, ceiling)

    report = {
        "machine": host,
        "slide": slide_info(path, meta, args.size),
        "notes": {
            "page_cache": "warm (slide file read or written just before)",
            "baseline": "per-tile read_region + convert('RGB') + PIL box resize into a numpy batch; "
            "no thumbnail, no tissue detection, no disk write",
            "ceiling": "tifffile page.decode (imagecodecs libjpeg-turbo) of each source tile, one at a time, "
            "single thread, no resize/copy/write",
        },
        "medssl_1_thread": single,
        "medssl_1_thread_openslide_reads": via_openslide,
        "medssl": medssl_figures,
        "baseline": baseline,
        "ceiling": ceiling,
        "targets": ratios,
    }
    if not args.skip_memory:
        half = ensure_slide(work, args.size // 2)
        report["memory"] = {
            "big": measure_memory(path, work / "out-memory", params),
            "quarter_area": measure_memory(half, work / "out-memory", params),
        }
    for folder in (out, work / "out-medssl-openslide", work / "out-medssl-threads"):
        shutil.rmtree(folder, ignore_errors=True)
    print_summary(report)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
