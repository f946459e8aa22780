"""Tiles per second through a PyTorch DataLoader: the medssl tile cache against a folder of JPEG tiles
and a NumPy memmap of the same tiles.

Usage::

    python benchmarks/bench_loader.py            # ~4,000 tiles of 224² from a 16,384² synthetic slide
    python benchmarks/bench_loader.py --quick    # ~1,000 tiles

Every loader yields batches of 256 uint8 ``[3, 224, 224]`` tensors (no augmentation) and runs one
epoch with 0, 1 and 2 DataLoader workers, on a warm page cache:

``medssl_train_order``   :func:`batch_loader` (whole batches read into shared memory) over
                         :class:`TileDataset` with :class:`BlockShuffleSampler` (chunk-local shuffling)
``medssl_threads``       :class:`ThreadedBatchLoader`: the same whole-batch reads by 1 or 2 threads in the
                         training process (no worker processes, no shared memory); "workers_N" = N threads
``medssl_random``        the same as ``medssl_train_order`` with ``RandomSampler`` (random access, as for fine-tuning)
``medssl_per_sample``    :class:`TileDataset` through a plain DataLoader (per-sample dicts, default
                         collate): the path per-sample CPU transforms take
``medssl_two_views_augmented``  the same with ``MultiViewd([histology_view(224)] * 2)``: two views
                         per tile, each crop, symmetries, colour and HED stain jitter, blur (on the CPU)
``jpeg_folder``          one JPEG file (q90) per tile, decoded with Pillow, random order (ImageFolder-style)
``memmap``               ``np.load(mmap_mode="r")`` of all tiles ``[N, 224, 224, 3]``, whole random batches
                         fancy-indexed into shared memory: the ceiling

``per_core`` divides by the processes doing the reading (the workers, or the main process with 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from medssl.cache import SlideCache
from medssl.data.datasets import ThreadedBatchLoader, TileDataset
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.transforms import MultiViewd, histology_view
from medssl.preprocess import TilingParams, tile_slides
from medssl.synthetic.slides import random_layout, write_slide

BATCH = 256


class JpegFolder(Dataset):
    """What ImageFolder does for one tile: open the file, decode, to a channel-first tensor."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        with Image.open(self.files[index]) as image:
            pixels = np.asarray(image.convert("RGB"))
        return {"image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))}


class MemmapBatches(Dataset):
    """Items are whole batches fancy-indexed from a memmap into shared memory (the ceiling)."""

    def __init__(self, path: Path):
        self.path, self.tiles = path, None

    def __len__(self) -> int:
        return int(np.load(self.path, mmap_mode="r").shape[0])

    def __getitem__(self, indices) -> dict:
        if self.tiles is None:
            self.tiles = np.load(self.path, mmap_mode="r")
        out = torch.empty((len(indices), *self.tiles.shape[1:]), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            out.share_memory_()
        np.take(self.tiles, np.sort(indices), axis=0, out=out.numpy())
        return {"image": out.permute(0, 3, 1, 2)}


def iterate_rate(loader, cores: int) -> dict:
    start, cpu, seen = time.perf_counter(), time.process_time(), 0
    for batch in loader:
        seen += len(batch["image"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "tiles": seen,
        "seconds": round(seconds, 3),
        "tiles_per_s": round(seen / seconds, 1),
        "per_core": round(seen / max(seconds * cores, 1e-9), 1),
        "tiles_per_cpu_s": round(seen / cpu, 1),
    }


def epoch_rate(dataset: Dataset, sampler, workers: int, batched: bool = False) -> dict:
    options = dict(num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None)
    if batched:
        loader = DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, BATCH, False), **options)
    else:
        loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, **options)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["image"] if "image" in batch else batch["views"][0])
    seconds = time.perf_counter() - start
    rate = seen / seconds
    return {
        "tiles": seen,
        "seconds": round(seconds, 3),
        "tiles_per_s": round(rate, 1),
        "per_core": round(rate / max(1, workers), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "medssl-bench-loader")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    size = 8192 if args.quick else 16384
    work = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"writing and tiling a {size}² slide ...", file=sys.stderr)
    slide = write_slide(
        work / "slide.tiff",
        random_layout(size, size, n_pieces=2, coverage=0.8, seed=1),
        mpp=0.25,
        downsamples=(1, 4, 16),
    )
    tile_slides([slide], work / "cache", TilingParams(target_mpp=0.25, tile_size=224), progress=False)
    dataset = TileDataset(work / "cache")
    tiles = SlideCache(work / "cache").tiles("slide")[:]
    np.save(work / "tiles.npy", tiles)
    (work / "jpeg").mkdir()
    files = []
    for k, tile in enumerate(tiles):
        files.append(work / "jpeg" / f"{k:06d}.jpg")
        Image.fromarray(tile).save(files[-1], quality=90)
    del tiles
    print(f"{len(dataset)} tiles ready", file=sys.stderr)

    augmented = TileDataset(work / "cache", transform=MultiViewd([histology_view(224)] * 2))

    def shuffled(n: int) -> RandomSampler:
        return RandomSampler(range(n), generator=torch.Generator().manual_seed(0))

    loaders = {  # name: (dataset, sampler, reads whole batches)
        "medssl_train_order": lambda: (dataset.batches(), BlockShuffleSampler(dataset.blocks(), seed=0), True),
        "medssl_random": lambda: (dataset.batches(), shuffled(len(dataset)), True),
        "medssl_per_sample": lambda: (dataset, BlockShuffleSampler(dataset.blocks(), seed=0), False),
        "medssl_two_views_augmented": lambda: (augmented, BlockShuffleSampler(dataset.blocks(), seed=0), False),
        "jpeg_folder": lambda: (JpegFolder(files), shuffled(len(files)), False),
        "memmap": lambda: (MemmapBatches(work / "tiles.npy"), shuffled(len(dataset)), True),
    }
    results: dict = {"medssl_threads": {}}
    for threads in (1, 2):
        loader = ThreadedBatchLoader(dataset, BlockShuffleSampler(dataset.blocks(), seed=0), BATCH, threads=threads)
        results["medssl_threads"][f"workers_{threads}"] = iterate_rate(loader, threads)
        print("medssl_threads", threads, results["medssl_threads"][f"workers_{threads}"], file=sys.stderr)
    for name, make in loaders.items():
        results[name] = {}
        for workers in (0, 1, 2):
            data, sampler, batched = make()
            results[name][f"workers_{workers}"] = epoch_rate(data, sampler, workers, batched)
            print(name, workers, results[name][f"workers_{workers}"], file=sys.stderr)
    one = {name: r["workers_1"]["tiles_per_s"] for name, r in results.items()}
    two = {name: r["workers_2"]["tiles_per_s"] for name, r in results.items()}
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "tiles": len(dataset),
        "tile": [224, 224, 3],
        "batch": BATCH,
        "disk_mib": {
            "medssl_raw": round(sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file()) / 2**20, 1),
            "jpeg_folder": round(sum(f.stat().st_size for f in files) / 2**20, 1),
        },
        "loaders": results,
        "ratios_at_1_worker": {
            "train_order_vs_jpeg": round(one["medssl_train_order"] / one["jpeg_folder"], 2),
            "random_vs_jpeg": round(one["medssl_random"] / one["jpeg_folder"], 2),
            "train_order_vs_memmap": round(one["medssl_train_order"] / one["memmap"], 2),
        },
        "ratios_at_2_workers_or_threads": {
            "threads_vs_jpeg": round(two["medssl_threads"] / two["jpeg_folder"], 2),
            "threads_vs_memmap": round(two["medssl_threads"] / two["memmap"], 2),
        },
        "scaling_1_to_2_workers": {
            name: round(r["workers_2"]["tiles_per_s"] / r["workers_1"]["tiles_per_s"], 2) for name, r in results.items()
        },
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
