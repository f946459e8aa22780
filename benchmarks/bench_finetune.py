"""Fine-tuning figures the downstream-tasks issue asks for: segmentation training throughput (2D and 3D)
and sliding-window inference time per CT volume; then the offline-probe figures of bench_probes.py when
that script exists beside this one.

Usage::

    python benchmarks/bench_finetune.py                  # ResNet-18 U-Nets, CPU, the issue's sizes
    python benchmarks/bench_finetune.py --quick          # 2 timed steps; sliding window estimated (below)
    python benchmarks/bench_finetune.py --device cuda

Rows:

``seg2d train``  :class:`~medssl.tasks.segmentation.Segmenter` with a 2D ResNet-18 U-Net, one grey channel,
                 3 classes, batches of 8 slices of 224² (``--size2d``): ``training_step`` (DiceCE), backward
                 and an AdamW step on one fixed in-memory batch (no loading: bench_loader.py measures that).
``seg3d train``  the same with a 3D ResNet-18 U-Net on batches of 2 patches of 96³.
``sliding``      ``predict_volume`` (MONAI ``sliding_window_inference``, window 96³, overlap 0.25,
                 Gaussian weighting, 2 windows per step) of the 3D model over one CT of 512×512×200
                 voxels on the cache grid (``medssl.synthetic.volumes.ct_phantom``, HU / 1000), i.e. a
                 scan already resampled to 1.5 mm: s/volume. ``--quick`` times 4 of its windows (a
                 96×168×168 block) and scales by MONAI's window count (147 at overlap 0.25), saying so.

Throughput is samples/s over ``--steps`` steps after ``--warmup``; the sliding window is timed once
after a one-window warm-up. Figures depend on the cores free while it runs (``--threads``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch


def segmenter(dims: int, width: float):
    from medssl.tasks.segmentation import Segmenter

    backbone = {"name": "resnet18", "spatial_dims": dims, "in_channels": 1, "width": width}
    return Segmenter(num_classes=3, backbone=backbone, hd95=False)


def train_throughput(model, batch: dict, steps: int, warmup: int) -> float:
    """Samples/s of training steps (forward, DiceCE, backward, AdamW) on one fixed batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        loss = model.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(batch["image"].device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(batch["image"].device)
    return steps * len(batch["image"]) / (time.perf_counter() - start)


def windows(shape_zyx: tuple[int, ...], roi: int, overlap: float) -> int:
    """How many windows ``sliding_window_inference`` runs over a volume: per axis one when it fits,
    else ``ceil((size − roi) / step) + 1`` with step ``int(roi × (1 − overlap))``, as MONAI scans."""
    import math

    step = max(1, int(roi * (1 - overlap)))
    return math.prod(1 if size <= roi else math.ceil((size - roi) / step) + 1 for size in shape_zyx)


def sliding_window_seconds(model, shape_xyz: tuple[int, int, int], overlap: float, quick: bool) -> tuple[float, str]:
    """Seconds for ``predict_volume`` over one CT phantom of ``shape_xyz`` voxels (cache grid), and how it
    was obtained: timed whole, or (``quick``) timed on a 2×2×1-window block and scaled by window count."""
    from medssl.synthetic.volumes import ct_phantom

    volume = torch.from_numpy(ct_phantom(shape_xyz)).permute(2, 1, 0)[None] / 1000.0  # [1, Z, Y, X]
    model.roi_size = (96, 96, 96)
    model.hparams.sw_overlap = overlap
    model.predict_volume(volume[:, :96, :96, :96])  # warm-up: one window
    part = volume[:, :96, :168, :168] if quick else volume
    _sync(model.device)
    start = time.perf_counter()
    labels = model.predict_volume(part)
    _sync(model.device)
    seconds = time.perf_counter() - start
    assert labels.shape == part.shape[1:]
    if not quick:
        return seconds, f"timed whole, {windows(tuple(volume.shape[1:]), 96, overlap)} windows"
    total, timed = windows(tuple(volume.shape[1:]), 96, overlap), windows(tuple(part.shape[1:]), 96, overlap)
    return seconds * total / timed, f"estimated: {timed} windows timed, × {total}/{timed}"


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_probes() -> None:
    """bench_probes.py's figures (offline probes), when another part of the suite has added it."""
    path = Path(__file__).with_name("bench_probes.py")
    if not path.is_file():
        print("\n(bench_probes.py not present: no probe figures)")
        return
    spec = importlib.util.spec_from_file_location("bench_probes", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = sys.argv
    sys.argv = [str(path), *(["--quick"] if "--quick" in saved else [])]
    try:
        module.main()
    finally:
        sys.argv = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--size2d", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument(
        "--quick", action="store_true", help="2 timed steps per row; sliding window timed on 4 windows and scaled"
    )
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 2 if args.quick else args.steps
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"bench_finetune: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}, steps {steps}"
    )
    rows = []
    model = segmenter(2, 1.0).to(device)
    s = args.size2d
    batch = {
        "image": torch.randn(8, 1, s, s, device=device),
        "label": torch.randint(0, 3, (8, 1, s, s), device=device),
    }
    rows.append(("seg2d train", f"ResNet-18 U-Net, batch 8 × {s}²", train_throughput(model, batch, steps, args.warmup)))
    print(f"{rows[-1][0]:<12} {rows[-1][1]:<36} {rows[-1][2]:8.2f} samples/s", flush=True)
    model = segmenter(3, 1.0).to(device)
    batch = {
        "image": torch.randn(2, 1, 96, 96, 96, device=device),
        "label": torch.randint(0, 3, (2, 1, 96, 96, 96), device=device),
    }
    rows.append(
        ("seg3d train", "ResNet-18 3D U-Net, batch 2 × 96³", train_throughput(model, batch, steps, args.warmup))
    )
    print(f"{rows[-1][0]:<12} {rows[-1][1]:<36} {rows[-1][2]:8.2f} samples/s", flush=True)
    seconds, how = sliding_window_seconds(model, (512, 512, 200), args.overlap, args.quick)
    what = f"512×512×200 CT, roi 96³, overlap {args.overlap}"
    print(f"{'sliding':<12} {what:<36} {seconds:8.1f} s/volume ({how})", flush=True)
    if not args.skip_probes:
        run_probes()


if __name__ == "__main__":
    main()
