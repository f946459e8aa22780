"""Random axial slices and random 96³ patches per second from a CT-sized volume cache.

Usage::

    python benchmarks/bench_volumes.py              # 512 × 512 × 200 CT phantom, 0.7 × 0.7 × 2.5 mm
    python benchmarks/bench_volumes.py --quick      # 256 × 256 × 100, for a smoke run

Modes (all on the same preprocessed data, single process, warm page cache; every read is copied into
a fresh NumPy array or tensor, as a DataLoader would hand it on):

``medssl``            :class:`medssl.cache.VolumeCache` on the cache ``medssl cache-volumes`` wrote:
                      float16 ``[Z, Y, X]``, one shard per volume, one axial slice per inner chunk,
                      uncompressed, so the reader memory-maps the shard file.
``medssl_via_zarr``   the same arrays read through zarr-python (what any Zarr client gets).
``medssl_zstd``       the same layout with zstd compression (read through zarr-python).
``monai_persistent``  MONAI's PersistentDataset with the same deterministic preprocessing cached by
                      ``torch.save``; every sample reloads the whole preprocessed volume, then takes a
                      random slice or ``RandSpatialCrop`` of 96³ (what MONAI's tutorials do).
``memmap``            ``np.load(mmap_mode="r")`` of the very same ``[Z, Y, X]`` array: the ceiling.

Also printed: seconds to preprocess and cache the volume, and bytes on disk per layout.
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
import warnings
from pathlib import Path

import numpy as np


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rate(fn, n: int, budget_s: float = 10.0) -> dict:
    """Calls of ``fn`` per second over ``n`` calls or ``budget_s`` seconds, whichever ends first."""
    fn()  # warm
    start, done = time.perf_counter(), 0
    while done < n and time.perf_counter() - start < budget_s:
        fn()
        done += 1
    seconds = time.perf_counter() - start
    return {"per_s": round(done / seconds, 1), "calls": done, "seconds": round(seconds, 3)}


def readers(shape_zyx, rng, patch: int):
    z_max, y_max, x_max = (n - patch for n in shape_zyx)

    def slice_of(array):
        return lambda: np.array(array[int(rng.integers(shape_zyx[0]))])

    def patch_of(array):
        def read():
            z, y, x = int(rng.integers(z_max + 1)), int(rng.integers(y_max + 1)), int(rng.integers(x_max + 1))
            return np.array(array[z : z + patch, y : y + patch, x : x + patch])

        return read

    return slice_of, patch_of


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "medssl-bench-volumes")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args(argv)

    import nibabel as nib
    import torch
    import zarr

    from medssl.cache import VolumeCache
    from medssl.preprocess import VolumeParams, cache_volumes
    from medssl.synthetic.volumes import ct_phantom, grid_affine, write_nifti

    shape = (256, 256, 100) if args.quick else (512, 512, 200)
    spacing = (0.7, 0.7, 2.5)
    work = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = write_nifti(work / "in" / "ct.nii.gz", ct_phantom(shape), grid_affine(spacing))
    log(f"volume {shape} written: {source}")
    params = VolumeParams(spacing=spacing, ct_norm="window", ct_window=(-1000.0, 1000.0))

    timings = {}
    start = time.perf_counter()
    cache_volumes([source], work / "raw", params, modality="CT", progress=False)
    timings["cache_seconds"] = round(time.perf_counter() - start, 2)
    cache_volumes(
        [source], work / "zstd", VolumeParams(**{**params.as_dict(), "codec": "zstd"}), modality="CT", progress=False
    )
    cache = VolumeCache(work / "raw")
    image = cache.image("ct")
    assert isinstance(image, np.memmap), "the raw layout should be memory-mapped"
    via_zarr = cache.group("ct")["image"]
    zstd = VolumeCache(work / "zstd").image("ct")
    np.save(work / "ceiling.npy", np.asarray(image))
    ceiling = np.load(work / "ceiling.npy", mmap_mode="r")
    shape_zyx = tuple(image.shape)
    log(f"cached: [Z, Y, X] = {shape_zyx}, dtype {image.dtype}")

    rng = np.random.default_rng(0)
    slice_of, patch_of = readers(shape_zyx, rng, args.patch)
    results = {}
    for name, array in [("medssl", image), ("medssl_via_zarr", via_zarr), ("medssl_zstd", zstd), ("memmap", ceiling)]:
        results[name] = {
            "axial_slices": rate(slice_of(array), args.samples),
            "patches": rate(patch_of(array), args.samples),
        }
        log(f"{name}: {results[name]}")

    results["monai_persistent"] = monai_persistent(source, work, spacing, shape_zyx, rng, args.patch)
    log(f"monai_persistent: {results['monai_persistent']}")

    for mode in ("axial_slices", "patches"):
        for name in ("medssl", "monai_persistent"):
            results[name][f"{mode}_vs_memmap"] = round(
                results[name][mode]["per_s"] / results["memmap"][mode]["per_s"], 3
            )
        results["medssl"][f"{mode}_vs_monai_persistent"] = round(
            results["medssl"][mode]["per_s"] / results["monai_persistent"][mode]["per_s"], 1
        )
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "zarr": zarr.__version__,
            "torch": torch.__version__,
            "nibabel": nib.__version__,
        },
        "volume": {
            "source_shape_xyz": list(shape),
            "spacing_mm": list(spacing),
            "cached_shape_zyx": list(shape_zyx),
            "dtype": str(image.dtype),
            "patch": args.patch,
        },
        "disk_mib": {
            "medssl_raw": round(disk_bytes(work / "raw" / "cache.zarr") / 2**20, 1),
            "medssl_zstd": round(disk_bytes(work / "zstd" / "cache.zarr") / 2**20, 1),
            "monai_persistent": round(disk_bytes(work / "persistent") / 2**20, 1),
        },
        **timings,
        "reads": results,
    }
    print(json.dumps(report, indent=2))
    return report


def monai_persistent(source: Path, work: Path, spacing, shape_zyx, rng, patch: int) -> dict:
    """PersistentDataset with the deterministic chain cached; random slice / 96³ crop per sample."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.data import PersistentDataset
        from monai.transforms import (
            Compose,
            CropForegroundd,
            EnsureChannelFirstd,
            LoadImaged,
            Orientationd,
            RandSpatialCropd,
            ScaleIntensityRanged,
            Spacingd,
        )

        deterministic = [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
            ScaleIntensityRanged(keys="image", a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True),
            CropForegroundd(keys="image", source_key="image", select_fn=lambda x: x > 0.25),
        ]
        patches = PersistentDataset(
            [{"image": str(source)}],
            Compose([*deterministic, RandSpatialCropd(keys="image", roi_size=(patch,) * 3, random_size=False)]),
            cache_dir=work / "persistent",
        )
        volumes = PersistentDataset([{"image": str(source)}], Compose(deterministic), cache_dir=work / "persistent")
        start = time.perf_counter()
        volumes[0]  # fills the cache: load + preprocess once
        fill = time.perf_counter() - start

        def one_slice():
            volume = volumes[0]["image"]
            return volume[..., int(rng.integers(volume.shape[-1]))].clone()

        out = {
            "axial_slices": rate(one_slice, 200, budget_s=20),
            "patches": rate(lambda: patches[0]["image"], 200, budget_s=20),
            "first_load_and_preprocess_seconds": round(fill, 2),
        }
    return out


if __name__ == "__main__":
    main()
