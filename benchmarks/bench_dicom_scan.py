"""What DICOM handling adds to `medssl cache-volumes`: header scan, SEG and RT Structure Set labels.

Usage::

    python benchmarks/bench_dicom_scan.py            # 512 × 512 × 120 CT series, 0.7 × 0.7 × 2.5 mm
    python benchmarks/bench_dicom_scan.py --quick    # 256 × 256 × 40, for a smoke run

A PACS-like folder is written (the CT series, a scout, an RT Dose grid, an RT Structure Set with a
64-point circular ROI on every slice, and a one-segment DICOM SEG), then timed, single process, warm
page cache:

``scan``        grouping the folder's files by series from their headers (``scan_series``), the step
                added before any pixel is read
``load``        MONAI loading the CT series (``load_volume``), what every run did already
``rtstruct``    the RT Structure Set onto the image grid (``dicom_label``: parse, map, fill polygons)
``seg``         the SEG onto the image grid (highdicom read, ``get_volume``, ``match_geometry``)

Prints one JSON object; ratios to ``load`` are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def timed(fn: Callable[[], T], repeats: int = 3) -> tuple[float, T]:
    """The best of ``repeats`` wall times of ``fn()`` (seconds) and its last result."""
    best, result = float("inf"), fn()
    for _ in range(repeats - 1):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description="What DICOM handling adds to medssl cache-volumes")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    shape = (256, 256, 40) if args.quick else (512, 512, 120)
    spacing, origin = (0.7, 0.7, 2.5), (-180.0, -180.0, 0.0)
    warnings.simplefilter("ignore")

    from medssl.preprocess.dicom import scan_series
    from medssl.preprocess.dicom_labels import dicom_label
    from medssl.preprocess.volumes import load_volume
    from medssl.synthetic.dicom_objects import read_series, write_rtdose, write_rtstruct, write_seg
    from medssl.synthetic.volumes import ct_phantom, write_dicom_series

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "study"
        write_dicom_series(folder, ct_phantom(shape), spacing, origin, prefix="ct", series_number=2)
        write_dicom_series(folder, ct_phantom((shape[0], shape[1], 1)), spacing, origin, prefix="scout")
        series = [ds for ds in read_series(folder) if ds.SeriesNumber == 2]
        write_rtdose(folder / "dose.dcm", series[0], origin=origin)
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        centre = [origin[a] + (shape[a] - 1) / 2 * spacing[a] for a in range(2)]  # LPS mm of the middle voxel
        radius = 0.3 * shape[0] * spacing[0]
        circle = [
            np.stack(
                [
                    centre[0] + radius * np.cos(angles),
                    centre[1] + radius * np.sin(angles),
                    np.full(64, origin[2] + k * spacing[2]),
                ],
                axis=1,
            )
            for k in range(shape[2])
        ]
        write_rtstruct(folder / "rtstruct.dcm", series, {"Body": circle})
        mask = np.zeros((shape[2], shape[1], shape[0]), dtype=bool)
        mask[:, shape[1] // 4 : shape[1] // 2, shape[0] // 4 : shape[0] // 2] = True
        write_seg(Path(tmp) / "seg.dcm", series, {"Box": mask})

        files = sorted(p for p in folder.iterdir())
        scan_s, groups = timed(lambda: scan_series(files))
        (ct,) = [g for g in groups if g.series_number == 2]
        load_s, image = timed(lambda: load_volume(folder, files=ct.files))
        rt_s, (rt_label, _) = timed(lambda: dicom_label(folder / "rtstruct.dcm", image, ct, folder))
        seg_s, (seg_label, _) = timed(lambda: dicom_label(Path(tmp) / "seg.dcm", image, ct, folder))

    print(
        json.dumps(
            {
                "shape_xyz": shape,
                "files": len(files),
                "series_found": len(groups),
                "scan_s": round(scan_s, 3),
                "load_s": round(load_s, 3),
                "rtstruct_s": round(rt_s, 3),
                "seg_s": round(seg_s, 3),
                "scan_over_load": round(scan_s / load_s, 3),
                "rtstruct_over_load": round(rt_s / load_s, 3),
                "seg_over_load": round(seg_s / load_s, 3),
                "rtstruct_voxels": int(np.asarray(rt_label).sum()),
                # a 64-gon inscribed in the circle: (64 / 2) sin(2 pi / 64) r^2 per slice, in voxels
                "rtstruct_voxels_polygon_area": round(
                    32 * np.sin(2 * np.pi / 64) * radius**2 / (spacing[0] * spacing[1]) * shape[2]
                ),
                "seg_voxels": int(np.asarray(seg_label).sum()),
                "seg_voxels_expected": int(mask.sum()),
                "python": sys.version.split()[0],
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
