"""What ``medssl tile --coords`` costs against plain tiling, and ``medssl export-h5`` against nothing.

Usage::

    python benchmarks/bench_interop.py                # 16384 × 16384 synthetic slide at 0.25 µm/px
    python benchmarks/bench_interop.py --size 8192    # quick check

One synthetic slide (real IHC texture, JPEG tiles, levels 1/4/16) is tiled at 0.5 µm/px into 224-px
tiles four ways, each single-process with one read thread into a fresh folder, ``--repeats`` times
(the fastest run counts: the others are the machine's noise):

``plain``      ``tile_slides`` as usual (tissue grid);
``on_grid``    ``--coords`` with the plain run's own exported coordinates (every corner a grid point:
               read block by block, as plain);
``off_grid``   ``--coords`` with the same corners shifted by 7 level-0 px (no corner a grid point: each
               tile read on its own, the cost of foreign coordinates such as a CLAM grid anchored elsewhere);
``export``     ``export_h5`` of the plain cache's coordinates (seconds, not tiles/s).

End to end includes the thumbnail, tissue mask and writes, the same in every mode, so ``reads`` also
times the pixel reads alone (``iter_tile_blocks``, one thread, same slide open, the three
grids' runs interleaved, fastest of ``--repeats``): the ratio ``off_grid / plain`` is the cost of reading
tiles one by one instead of block by block.

Progress goes to stderr; one JSON object with the figures goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from medssl.cache import SlideCache
from medssl.export.h5 import export_h5
from medssl.preprocess import RegionParams, TilingParams, tile_slides
from medssl.preprocess.patch_coords import plan_coords_grid
from medssl.preprocess.slides import Slide
from medssl.preprocess.tiling import iter_tile_blocks, make_thumbnail, plan_grid
from medssl.synthetic.slides import random_layout, write_slide


def run(slide: Path, out: Path, params: TilingParams, repeats: int, regions: RegionParams = RegionParams()) -> dict:
    best, tiles = float("inf"), 0
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        summary = tile_slides([slide], out, params, threads=1, progress=False, regions=regions)
        best = min(best, time.perf_counter() - start)
        if summary.failed:
            raise SystemExit(f"{out}: {summary.failed[0].reason}")
        tiles = summary.tiles
    return {"tiles": tiles, "seconds": round(best, 2), "tiles_per_s": round(tiles / best, 1)}


def time_reads(slide_path: Path, params: TilingParams, repeats: int) -> dict:
    """Fastest seconds to read all tiles of the plain grid, of its corners as imported coordinates, and of
    those corners shifted by 7 level-0 px; runs interleaved so machine noise hits all three alike."""
    with Slide(slide_path) as slide:
        thumb = make_thumbnail(slide, params.tissue)
        plain = plan_grid(slide, thumb, params)
        grids = {
            "plain": plain,
            "on_grid": plan_coords_grid(slide, thumb, params, plain.coords),
            "off_grid": plan_coords_grid(slide, thumb, params, plain.coords + 7),
        }
        level = slide.level_for(params.target_mpp)
        best = dict.fromkeys(grids, float("inf"))
        for _ in range(repeats):
            for name, grid in grids.items():
                start = time.perf_counter()
                for _block in iter_tile_blocks(slide, grid, params, level, threads=1):
                    pass
                best[name] = min(best[name], time.perf_counter() - start)
    figures = {name: round(seconds, 3) for name, seconds in best.items()}
    figures["tiles"] = len(plain)
    figures["off_grid_over_plain"] = round(best["off_grid"] / best["plain"], 2)
    figures["on_grid_over_plain"] = round(best["on_grid"] / best["plain"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--work-dir", default="/tmp/medssl-bench-interop")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.work_dir)
    slide = work / f"slide-{args.size}.tiff"
    if not slide.exists():
        print(f"writing {slide}", file=sys.stderr)
        write_slide(slide, random_layout(args.size, args.size, seed=0), mpp=0.25, downsamples=(1, 4, 16))
    params = TilingParams(target_mpp=0.5, tile_size=224)
    figures: dict = {"machine": platform.processor() or platform.machine(), "slide_px": args.size}
    figures["plain"] = run(slide, work / "plain", params, args.repeats)
    start = time.perf_counter()
    export_h5(work / "plain", work / "h5")
    figures["export_seconds"] = round(time.perf_counter() - start, 3)
    figures["on_grid"] = run(slide, work / "on", params, args.repeats, RegionParams(coords_dir=str(work / "h5")))
    shifted = work / "h5-shifted"
    shifted.mkdir(exist_ok=True)
    with h5py.File(work / "h5" / f"{slide.stem}.h5") as source, h5py.File(shifted / f"{slide.stem}.h5", "w") as out:
        coords = np.asarray(source["coords"][()]) + 7  # pyright: ignore[reportIndexIssue]
        out.create_dataset("coords", data=coords).attrs.update(dict(source["coords"].attrs))
    figures["off_grid"] = run(slide, work / "off", params, args.repeats, RegionParams(coords_dir=str(shifted)))
    same = np.array_equal(SlideCache(work / "plain").tiles(slide.stem)[:], SlideCache(work / "on").tiles(slide.stem)[:])
    figures["on_grid_pixels_identical"] = bool(same)
    figures["off_grid_time_ratio"] = round(figures["off_grid"]["seconds"] / figures["plain"]["seconds"], 2)
    figures["on_grid_time_ratio"] = round(figures["on_grid"]["seconds"] / figures["plain"]["seconds"], 2)
    figures["reads"] = time_reads(slide, params, args.repeats)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
