"""Cohorts of many small slides: the fixed cost of tiling one slide, and how a cache of 10,000 slides
behaves when it is resumed, listed (``medssl info``) and indexed (``TileDataset``).

Usage::

    python benchmarks/bench_cohort.py                              # 200 real slides; 1,000 / 3,000 / 10,000
    python benchmarks/bench_cohort.py --tile-slides 50 --sizes 200 600   # quick check

**Fixed cost.** ``--tile-slides`` tiny slides (512 × 512 px at 0.5 µm/px, levels 1 and 4, one tissue
piece of real IHC texture, written by :mod:`medssl.synthetic.slides`) are really tiled with
``tile_slides(..., TilingParams(target_mpp=0.5, tile_size=224))`` into a fresh cache, with 1 and with 2
worker processes. With 1 worker the bench wraps the tiler's steps with wall-clock timers and reports
their split per slide (``split_ms``): opening the slide (OpenSlide, the corner probe, the direct-TIFF
check), the thumbnail read and the tissue mask, the grid, the skip check, the staging group, the small
arrays, the ``tiles`` array (creation, pixel reads, writes), the QC picture (drawing, PNG), the commit,
closing the slide, and what the job runner adds around jobs (manifest rows, progress bars). With 2
workers it reports the wall time per slide per worker, and the start-up of the pool (a 2-worker re-run
that skips everything, minus the same with 1 worker).

**Scale.** One template slide (the first of the above) is hard-linked ``N`` times into one folder
(``cohort/s00000.tiff`` ...): N distinct files with the same content, so each becomes its own cache item
with its own source fingerprint; this cohort is tiled at 2 µm/px with 64-px tiles (``SCALE_PARAMS``: 4
tiles, about 50 kB a slide, so 10,000 slides need about 1 GB of disk). The cache is filled up to N =
each of ``--sizes`` by running
:func:`medssl.jobs.run_jobs` with a :class:`~medssl.preprocess.tile.SlideTiler` whose ``prepare`` step
(opening and planning the slide) is computed once for the template and reused: every item is still
written by ``SlideTiler.write`` and committed by the same protocol as ``medssl tile`` (staging group,
small arrays, ``tiles`` pixels read from the file, QC picture, commit by atomic rename), with its own
``slide_id`` and source fingerprint — exactly what really tiling each link would store. At each N it
times (best of ``--repeats``):

- ``rerun_s``: ``tile_slides`` on the folder again, every slide skipped (asserted);
- ``info_s``: ``medssl info <cache>`` in a subprocess, total and minus a bare
  ``python -c 'import medssl.cli'`` (``info_minus_import_s``);
- ``dataset_s``: ``TileDataset(cache)`` over all slides (its length is checked against N × tiles).

and fits each against N (``slope_ms_per_slide``, least squares). Progress goes to stderr; one JSON
object goes to stdout. Timings on a shared machine are inflated by other load: compare figures of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import medssl.preprocess.tile as tile_mod
import medssl.preprocess.tiling as tiling_mod
from medssl import jobs as jobs_mod
from medssl.cache import store as cache_mod
from medssl.jobs import Job, collect_jobs, run_jobs
from medssl.preprocess import TilingParams, tile_slides
from medssl.preprocess.slides import SLIDE_SUFFIXES, Slide
from medssl.preprocess.tile import KIND, SlideTiler, StorageParams, cache_params
from medssl.synthetic.slides import random_layout, write_slide

SIDE, MPP = 512, 0.5
PARAMS = TilingParams(target_mpp=0.5, tile_size=224)
STORAGE = StorageParams()
#: The big cohort keeps pixels small (4 tiles of 64 px at 2 µm/px per slide, about 50 kB): at 10,000 slides
#: what is measured is the per-item bookkeeping, and the disk holds about 1 GB instead of 6.
SCALE_PARAMS = TilingParams(target_mpp=2.0, tile_size=64)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def make_slides(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"tiny{k:04d}.tiff"
        if not path.exists():
            layout = random_layout(SIDE, SIDE, n_pieces=1, coverage=0.6, seed=k)
            write_slide(path, layout, mpp=MPP, downsamples=(1, 4))
        paths.append(path)
    return paths


# -- stage timers ---------------------------------------------------------------------------------
class Stages:
    """Accumulated wall seconds of wrapped functions, keyed by stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, stage: str) -> Callable[[], None]:
        original = getattr(owner, name)
        seconds = self.seconds

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


@contextmanager
def stage_timers() -> Iterator[Stages]:
    stages = Stages()
    targets = [
        (Slide, "__init__", "slide_open"),
        (Slide, "_probe", "slide_corner_probe"),
        (Slide, "_open_direct", "slide_direct_tiff_check"),
        (Slide, "close", "slide_close"),
        (tile_mod, "make_thumbnail", "thumbnail"),
        (tiling_mod, "find_tissue", "tissue_mask"),
        (tile_mod, "plan_grid", "grid"),
        (cache_mod, "unchanged_item", "skip_check"),
        (cache_mod, "begin_item", "staging_group"),
        (cache_mod, "write_small_arrays", "small_arrays"),
        (zarr.Group, "create_array", "tiles_array_create"),
        (tile_mod, "_stream_tiles", "tiles_stream"),
        (tiling_mod, "read_block", "tiles_pixel_read"),
        (tile_mod, "tile_overlay", "qc_draw"),
        (tile_mod, "save_png_atomically", "qc_png"),
        (cache_mod, "commit_item", "commit"),
        (jobs_mod, "_guarded", "job"),
        (tile_mod, "run_jobs", "runner"),
    ]
    undo = [stages.wrap(owner, name, stage) for owner, name, stage in targets]
    try:
        yield stages
    finally:
        for restore in reversed(undo):
            restore()


def flat_split(s: dict[str, float], wall: float, n: int) -> dict[str, float]:
    """Milliseconds per slide of non-overlapping stages (nested timers subtracted from their parents)."""
    leaf = {
        "open_slide_openslide": s["slide_open"] - s["slide_corner_probe"] - s["slide_direct_tiff_check"],
        "open_slide_corner_probe": s["slide_corner_probe"],
        "open_slide_direct_tiff_check": s["slide_direct_tiff_check"],
        "thumbnail_read": s["thumbnail"] - s["tissue_mask"],
        "tissue_mask": s["tissue_mask"],
        "grid": s["grid"],
        "skip_check": s["skip_check"],
        "staging_group": s["staging_group"],
        "small_arrays_write": s["small_arrays"],
        "tiles_array_create": s["tiles_array_create"],
        "tiles_pixel_read": s["tiles_pixel_read"],
        "tiles_write": s["tiles_stream"] - s["tiles_pixel_read"],
        "qc_draw": s["qc_draw"],
        "qc_png_encode_write": s["qc_png"],
        "commit": s["commit"],
        "slide_close": s["slide_close"],
    }
    leaf["job_other"] = s["job"] - sum(leaf.values())
    leaf["runner_manifest_progress"] = s["runner"] - s["job"]
    leaf["setup_collect_open_store"] = wall - s["runner"]
    return {k: round(1000 * v / n, 2) for k, v in leaf.items()}


def fixed_cost(slides: list[Path], work: Path) -> dict:
    out: dict[str, Any] = {"slides": len(slides), "slide": f"{SIDE}x{SIDE} px at {MPP} um/px, levels (1, 4)"}
    folder = slides[0].parent
    skip_wall = {}
    for workers in (1, 2):
        cache = work / f"fixed-w{workers}"
        shutil.rmtree(cache, ignore_errors=True)
        timers = stage_timers() if workers == 1 else _no_timers()
        with timers as stages:
            start = time.perf_counter()
            summary = tile_slides([folder], cache, PARAMS, STORAGE, workers=workers, progress=False)
            wall = time.perf_counter() - start
        assert summary.counts()["done"] == len(slides), summary.counts()
        start = time.perf_counter()
        again = tile_slides([folder], cache, PARAMS, STORAGE, workers=workers, progress=False)
        skip_wall[workers] = time.perf_counter() - start
        assert again.counts()["skipped"] == len(slides), again.counts()
        entry = {
            "wall_s": round(wall, 2),
            "per_slide_ms": round(1000 * wall / len(slides), 1),
            "per_slide_per_worker_ms": round(1000 * wall * workers / len(slides), 1),
            "tiles": summary.tiles,
            "skip_rerun_s": round(skip_wall[workers], 3),
        }
        if stages is not None:
            entry["split_ms"] = flat_split(stages.seconds, wall, len(slides))
        out[f"workers_{workers}"] = entry
        log(f"tiled {len(slides)} slides with {workers} worker(s) in {wall:.1f} s")
    out["pool_startup_s"] = round(skip_wall[2] - skip_wall[1], 2)
    return out


@contextmanager
def _no_timers() -> Iterator[None]:
    yield None


# -- a big cohort ---------------------------------------------------------------------------------
class ReplayTiler(SlideTiler):
    """A :class:`SlideTiler` whose ``prepare`` (open + thumbnail + tissue + grid) is done once for the
    template slide that every cohort file is a hard link of; ``write`` and the commit are the real ones."""

    _planned: Any = None  #: the template's open slide and plan, made on first use in each process

    def __init__(self, out: Path, template: Path):
        super().__init__(out, SCALE_PARAMS, STORAGE, None, threads=1)
        self.template = template

    @contextmanager
    def prepare(self, job: Job, source: dict):
        planned = self._planned
        if planned is None:
            slide = Slide(self.template)
            planned = self._planned = tile_mod._PlannedSlide(slide, *self._plan(slide, job, source))
        attrs = {**planned.attrs, "slide_id": job.item_id, "source": source}
        yield tile_mod._PlannedSlide(planned.slide, attrs, planned.thumb, planned.grid)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__getstate__().items() if k != "_planned"}


def grow_cohort(template: Path, folder: Path, cache: Path, n: int, workers: int) -> float:
    """Hard links up to ``n`` in ``folder``, and their items committed in ``cache``; seconds spent writing."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        link = folder / f"s{k:05d}.tiff"
        if not link.exists():
            os.link(template, link)
    cache_mod.open_for_writing(cache, KIND, cache_params(SCALE_PARAMS, STORAGE))
    present = set(cache_mod.item_attrs(cache, KIND))
    jobs = [job for job in collect_jobs([folder], SLIDE_SUFFIXES, "slide_id", "path") if job.item_id not in present]
    start = time.perf_counter()
    results = run_jobs(
        jobs, ReplayTiler(cache, template), cache / "build-manifest.csv", workers=workers, progress=False
    )
    failed = [r for r in results if r.status != "done"]
    assert not failed, failed[:3]
    return time.perf_counter() - start


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def subprocess_seconds(argv: list[str], repeats: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return best_of(repeats, lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env))


def measure(folder: Path, cache: Path, n: int, tiles_per_slide: int, repeats: int) -> dict:
    def rerun() -> None:
        summary = tile_slides([folder], cache, SCALE_PARAMS, STORAGE, progress=False)
        assert summary.counts()["skipped"] == n, summary.counts()

    from medssl.data.datasets import TileDataset  # here: spawned workers re-import this script; torch stays out

    def dataset() -> None:
        data = TileDataset(cache)
        assert len(data.slide_ids) == n and len(data) == n * tiles_per_slide, (len(data.slide_ids), len(data))

    bare = subprocess_seconds([sys.executable, "-c", "import medssl.cli"], repeats)
    info = subprocess_seconds([sys.executable, "-m", "medssl.cli", "info", str(cache)], repeats)
    return {
        "n": n,
        "rerun_s": round(best_of(repeats, rerun), 3),
        "info_s": round(info, 3),
        "info_minus_import_s": round(info - bare, 3),
        "import_medssl_cli_s": round(bare, 3),
        "dataset_s": round(best_of(repeats, dataset), 3),
    }


def slopes(rows: list[dict]) -> dict:
    n = np.array([r["n"] for r in rows], dtype=np.float64)
    out = {}
    for key in ("rerun_s", "info_minus_import_s", "dataset_s"):
        t = np.array([r[key] for r in rows])
        slope, intercept = np.polyfit(n, t, 1) if len(rows) > 1 else (t[0] / n[0], 0.0)
        out[key] = {"ms_per_slide": round(1000 * slope, 4), "intercept_s": round(float(intercept), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/medssl-bench-cohort"))
    parser.add_argument("--tile-slides", type=int, default=200, help="tiny slides really tiled for the fixed cost")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--build-workers", type=int, default=2, help="worker processes filling the big cache")
    parser.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    args = parser.parse_args()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    slides = make_slides(work / "tiny", args.tile_slides)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
        "fixed_cost": fixed_cost(slides, work),
    }
    template, folder, cache = slides[0], work / "cohort", work / "cohort-cache"
    with Slide(template) as slide:
        thumb = tiling_mod.make_thumbnail(slide, SCALE_PARAMS.tissue)
        tiles_per_slide = len(tile_mod.plan_grid(slide, thumb, SCALE_PARAMS))
    rows = []
    for n in sorted(args.sizes):
        built = grow_cohort(template, folder, cache, n, args.build_workers)
        log(f"cohort of {n}: wrote the new items in {built:.1f} s")
        row = measure(folder, cache, n, tiles_per_slide, args.repeats)
        row["build_new_items_s"] = round(built, 1)
        rows.append(row)
        log(json.dumps(row))
    report["scale"] = {
        "how": "N hard links of one tiny slide; items written by SlideTiler.write + the staging/commit protocol "
        "with prepare (open + plan) computed once; see the module docstring",
        "rows": rows,
        "slope": slopes(rows),
    }
    report["machine"]["load_1min_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
