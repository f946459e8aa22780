"""Where an Alice training step (Jiang et al., ICCV 2023) spends its time and memory, and what mining its
corresponding crops costs, at 64³ and 96³ crops and a per-device batch of 2 and 4 (2 views each).

Usage::

    python benchmarks/bench_alice.py                            # SwinUNETR feature_size 48, CPU, 1 repeat
    python benchmarks/bench_alice.py --feature-size 12 48 --threads 2
    python benchmarks/bench_alice.py --checkpoint fallback      # SwinUNETR use_checkpoint where needed to fit
    python benchmarks/bench_alice.py --device cuda --repeats 5 --max-gb 120

The model is :class:`~medssl.methods.alice.Alice` with its defaults (``configs/pretrain/alice.yaml``):
MONAI SwinUNETR (``--feature-size`` 48, the paper-size network: nnFormer's embedding is 48 too), head
512/512, CASA 8 heads, 75 % axial block masking, AdamW from the method's ``configure_optimizers``; the
last layers train from the first step (``freeze_last_layer_epochs=0``, the steady state). Inputs are a
batch of real sampler output: ``same_volume`` pairs of the phantom below, collated.

Rows, per setting (feature size × crop × batch), all in milliseconds:

- ``step``: one training step as Lightning runs it (``on_train_batch_start``, ``training_step``,
  ``zero_grad``, backward, ``on_after_backward``, AdamW step, ``on_train_batch_end`` = the teacher EMA),
  with ``fwd`` / ``bwd`` / ``opt+EMA`` apart. Gradient clipping (Lightning's, 3.0 in the config) and
  Lightning's loop are not counted.
- the step's forward + backward split three ways, inside the step itself (no extra passes): ``student``
  the student SwinUNETR's forward on both masked views and its backward; ``teacher`` the teacher's
  forward on both clean views (no gradient); ``heads+CASA+loss`` the rest: masks, both heads, CASA twice
  per view, L_cls, L_patch, L_rec, forward and backward. The forwards are timed around each backbone's
  ``dense`` call. The backward is cut where it first reaches the student: a hook on the student's
  outputs runs as autograd is about to run the node that made one of them. Autograd runs the ready node
  created last first, the heads' and losses' nodes were all created after the student's, and none of
  them waits on a student node, so by then the heads' and losses' backward is done and from then on the
  student's runs (exact up to that ordering, which is autograd's on one device).
- ``same_volume`` / ``body_coord``: the correspondence mining of one batch, ``sampler.pair`` once per
  sample (the samplers the data module builds: ``crop_size`` only), on ``float32`` memory-mapped
  volumes of ``--volume`` voxels (default 160×256×256, an abdomen-sized cached volume) with a synthetic body
  (an elliptic cylinder of soft tissue in air, 0.9× scaled for the partner patient). Always on the CPU,
  where a DataLoader worker does it. Files are in the page cache after the warm-up pair, as a volume
  cache read every epoch is.

Memory is that of the first step (which also creates AdamW's state): on CPU the process's peak RSS
(``ru_maxrss``: imports, model, the phantom pages read) and ``Δ``, its growth over the peak before the
step; on CUDA ``torch.cuda.max_memory_allocated`` and its growth over the allocation before the step.

Each setting runs in its own process, smallest workload (batch × voxels) first, so one setting's peak
is its own and running out of memory ends that setting only. Before a setting starts its peak is
**projected** from the settings measured so far with the same network (a straight line in batch ×
voxels through them; from one, Δ scaled in proportion, which overestimates as Δ holds the fixed optimiser
state). A setting projected over ``--max-gb`` is not run and says so; one that runs is stopped if its
resident memory passes ``--max-gb`` anyway. ``--checkpoint on`` builds every SwinUNETR with MONAI's
``use_checkpoint`` (its Swin stages recompute activations in the backward; its convolutional encoder
and decoder blocks do not), ``fallback`` only those projected over the limit without it.

Timings are medians of ``--repeats`` steps after ``--warmup`` untimed ones (default 1; the first step
gives the memory either way); on CUDA every boundary synchronises. One repeat is the default: on CPU a
step of the paper-size network takes minutes, and timings of a shared machine are noisy anyway;
``--warmup 0`` times the first step itself (on CPU it costs about what later ones do: AdamW's state is
small next to the activations).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch

# a sibling script: benchmarks/ is on sys.path when run
from bench_training import log, machine_line, method_optimizer, rss_mib, run_setting, sync

from medssl.data.correspondence import BodyCoordinateSampler, SameVolumeSampler
from medssl.methods.alice import Alice

SAMPLERS = {"same_volume": SameVolumeSampler, "body_coord": BodyCoordinateSampler}
PARTS = ("student", "teacher", "heads+CASA+loss")
STEP = ("fwd", "bwd", "opt+EMA", "step")


# -- inputs ------------------------------------------------------------------------------------------------
def phantom(shape: tuple[int, int, int], scale: float, seed: int) -> np.ndarray:
    """A CT-like volume in HU: air (-1000), an elliptic cylinder of soft tissue along z (``scale`` of the
    in-plane extent, 90 % of the slices), a denser core, and noise, so both samplers find a body."""
    depth, height, width = shape
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:height, :width]
    radius = ((y - height / 2) / (0.42 * scale * height)) ** 2 + ((x - width / 2) / (0.45 * scale * width)) ** 2
    plane = np.where(radius <= 1.0, 40.0, -1000.0) + np.where(radius <= 0.2, 300.0, 0.0)
    volume = np.full(shape, -1000.0, dtype=np.float32)
    first, last = int(0.05 * depth), int(0.95 * depth)
    volume[first:last] = plane.astype(np.float32)
    volume += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    return volume


def write_volumes(folder: Path, shape: tuple[int, int, int]) -> list[Path]:
    """Two patients' volumes as ``.npy`` files (read memory-mapped, as the volume cache is)."""
    paths = []
    for k, scale in enumerate((1.0, 0.9)):
        paths.append(folder / f"volume{k}.npy")
        np.save(paths[-1], phantom(shape, scale, seed=k))
    return paths


def mining_times(paths: list[str], crop: int, batch: int, repeats: int) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Median seconds (over at least 5) to mine one batch with each sampler, and one collated ``same_volume`` batch."""
    volumes = [np.load(path, mmap_mode="r") for path in paths]
    rng = np.random.default_rng(0)
    times, views = {}, []
    for name, kind in SAMPLERS.items():
        sampler = kind(crop_size=crop)
        sampler.pair(volumes[0], volumes[1], rng)  # warm-up: the files into the page cache
        runs = []
        for _ in range(max(repeats, 5)):  # cheap: a few batches even with one repeat
            start = time.perf_counter()
            pairs = [sampler.pair(volumes[0], volumes[1], rng) for _ in range(batch)]
            runs.append(time.perf_counter() - start)
        times[name] = statistics.median(runs)
        if name == "same_volume":
            views = [torch.stack([p[f"view_{v}"] for p in pairs]) for v in "ab"]
    return times, views


# -- the model ---------------------------------------------------------------------------------------------
def build_model(feature_size: int, checkpoint: bool) -> Alice:
    return Alice(backbone={"feature_size": feature_size, "use_checkpoint": checkpoint}, freeze_last_layer_epochs=0)


# -- timing ------------------------------------------------------------------------------------------------
class PartClock:
    """Times the backbones inside one step: each ``dense`` call's forward, and when the backward first
    reaches the student (module docstring), synchronising on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.forward = {"student": 0.0, "teacher": 0.0}
        self.student_backward_start = float("inf")

    def now(self) -> float:
        sync(self.device.type)
        return time.perf_counter()

    def _reached(self, gradient: torch.Tensor) -> None:
        self.student_backward_start = min(self.student_backward_start, self.now())

    def wrap(self, name: str, dense: Callable[[torch.Tensor], dict]) -> Callable[[torch.Tensor], dict]:
        def timed(images: torch.Tensor) -> dict:
            start = self.now()
            outputs = dense(images)
            self.forward[name] += self.now() - start
            for tensor in outputs.values():
                if tensor.requires_grad:
                    tensor.register_hook(self._reached)
            return outputs

        return timed

    @contextmanager
    def around(self, model: Alice) -> Iterator[None]:
        with (
            mock.patch.object(model.student, "dense", self.wrap("student", model.student.dense)),
            mock.patch.object(model.teacher, "dense", self.wrap("teacher", model.teacher.dense)),
        ):
            yield


def step_times(model: Alice, optimizer: torch.optim.Optimizer, batch: dict, device: torch.device) -> dict[str, float]:
    """One training step in Lightning's order of automatic optimisation: its phases, and its forward +
    backward split between the student backbone, the teacher backbone and the rest."""
    clock, parts = [], PartClock(device)

    def mark() -> None:
        clock.append(parts.now())

    with parts.around(model):
        mark()
        model.on_train_batch_start(batch, 0)
        loss = model.training_step(batch, 0)
        mark()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.on_after_backward()
        mark()
    optimizer.step()
    model.on_train_batch_end({"loss": loss}, batch, 0)
    mark()
    forward, backward = clock[1] - clock[0], clock[2] - clock[1]
    head_backward = parts.student_backward_start - clock[1]
    return {
        "fwd": forward,
        "bwd": backward,
        "opt+EMA": clock[3] - clock[2],
        "step": clock[3] - clock[0],
        "student": parts.forward["student"] + backward - head_backward,
        "teacher": parts.forward["teacher"],
        "heads+CASA+loss": forward - sum(parts.forward.values()) + head_backward,
    }


def measure(args: argparse.Namespace, setting: dict) -> dict:
    """One setting, in its own process: mining, the first step's memory, then the medians."""
    warnings.filterwarnings("ignore")  # self.log without a Trainer warns once; MONAI's import-time notices
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    crop, batch_size = setting["crop"], setting["batch"]
    mining, views = mining_times(args.volume_files, crop, batch_size, args.repeats)
    model = build_model(setting["feature_size"], setting["checkpoint"]).to(device).train()
    optimizer = method_optimizer(model)
    batch = {"views": [v.to(device) for v in views]}

    sync(device.type)
    before = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    runs, peak = [], before
    for r in range(args.warmup + args.repeats):
        log(f"  step {r + 1}/{args.warmup + args.repeats}{' (warm-up)' if r < args.warmup else ''} ...")
        runs.append(step_times(model, optimizer, batch, device))
        if r == 0:  # the first step's memory
            sync(device.type)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mib()
    runs = runs[args.warmup :]
    seconds = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    return {
        **setting,
        "seconds": seconds,
        "mining": mining,
        "peak_mib": peak,
        "delta_mib": peak - before,
        "threads": torch.get_num_threads(),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


# -- driver ------------------------------------------------------------------------------------------------
def workload(setting: dict) -> int:
    return setting["batch"] * setting["crop"] ** 3


def projected_mib(setting: dict, measured: list[dict]) -> tuple[float, str] | None:
    """The setting's peak from the measured ones with the same network (module docstring), or None."""
    same = [
        r for r in measured if r["feature_size"] == setting["feature_size"] and r["checkpoint"] == setting["checkpoint"]
    ]
    loads = sorted({workload(r) for r in same})
    if len(loads) >= 2:
        slope, intercept = np.polyfit([workload(r) for r in same], [r["peak_mib"] for r in same], 1)
        return float(intercept + slope * workload(setting)), f"linear in batch×voxels through {len(same)} settings"
    if same:
        r = same[-1]
        base = r["peak_mib"] - r["delta_mib"]
        return base + r["delta_mib"] * workload(setting) / workload(r), "Δ scaled from one setting"
    return None


def run_child(args: argparse.Namespace, setting: dict, limit_mib: float) -> dict:
    """The setting in a fresh process, stopped if its resident memory passes ``limit_mib``."""
    return run_setting(__file__, args.passed, setting, limit_mib, ("--volume-files", *args.volume_files))


def settings(args: argparse.Namespace) -> list[dict]:
    grid = [
        {"feature_size": fs, "crop": crop, "batch": batch, "checkpoint": args.checkpoint == "on"}
        for fs in args.feature_size
        for crop in args.sizes
        for batch in args.batches
    ]
    return sorted(grid, key=lambda s: (s["feature_size"], workload(s)))


def run_all(args: argparse.Namespace) -> list[dict]:
    limit = 1024 * args.max_gb
    rows: list[dict] = []
    for setting in settings(args):
        name = f"feature_size {setting['feature_size']}, {setting['crop']}³, batch {setting['batch']}"
        guess = projected_mib(setting, [r for r in rows if "error" not in r and "skipped" not in r])
        if guess is not None and guess[0] > limit and args.checkpoint == "fallback":
            rows.append({**setting, "skipped": f"not run: projected {guess[0] / 1024:.1f} GB ({guess[1]})"})
            setting = {**setting, "checkpoint": True}
            guess = projected_mib(setting, [r for r in rows if "error" not in r and "skipped" not in r])
        if guess is not None and guess[0] > limit:
            rows.append({**setting, "skipped": f"not run: projected {guess[0] / 1024:.1f} GB ({guess[1]})"})
            log(f"{name}: {rows[-1]['skipped']}")
            continue
        log(f"{name}{', use_checkpoint' if setting['checkpoint'] else ''} ...")
        rows.append(run_child(args, setting, limit))
        if "error" in rows[-1]:
            log(f"  {rows[-1]['error']}")
        else:
            log(f"  step {rows[-1]['seconds']['step']:.2f} s, peak {rows[-1]['peak_mib'] / 1024:.1f} GB")
    return rows


def table(rows: list[dict], memory: str) -> str:
    columns = ["fs", "crop", "batch", "ckpt", *(f"{c} ms" for c in STEP), *(f"{c} ms" for c in PARTS)]
    columns += [*(f"{c} ms/batch" for c in SAMPLERS), f"peak MiB ({memory})", "Δ MiB"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for r in rows:
        cells = [str(r["feature_size"]), f"{r['crop']}³", str(r["batch"]), "on" if r["checkpoint"] else "off"]
        if "seconds" in r:
            s = r["seconds"]
            cells += [f"{1e3 * s[c]:.0f}" for c in (*STEP, *PARTS)]
            cells += [f"{1e3 * r['mining'][c]:.1f}" for c in SAMPLERS]
            cells += [f"{r['peak_mib']:.0f}", f"{r['delta_mib']:.0f}"]
        else:
            cells += [r.get("skipped") or r["error"]] + [""] * (len(columns) - len(cells) - 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--feature-size", type=int, nargs="+", default=[48], help="SwinUNETR feature_size(s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="cubic crop sides")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4], help="pairs per device")
    parser.add_argument("--checkpoint", choices=("off", "on", "fallback"), default="off", help="use_checkpoint")
    parser.add_argument("--max-gb", type=float, default=12.0, help="skip / stop settings over this peak")
    parser.add_argument("--volume", type=int, nargs=3, default=[160, 256, 256], metavar=("D", "H", "W"))
    parser.add_argument("--repeats", type=int, default=1, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (0: the first step is timed)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--volume-files", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.child:
        print(json.dumps(measure(args, json.loads(args.child))))
        return []
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if args.device == "cpu" and load > 0.5:
        log(f"warning: load average {load:.2f} before starting: other processes share the cores, timings suffer")
    args.passed = list(sys.argv[1:] if argv is None else argv)

    with tempfile.TemporaryDirectory() as folder:
        args.volume_files = [str(p) for p in write_volumes(Path(folder), tuple(args.volume))]
        rows = run_all(args)
    loads = f"load average (1 min) {load:.2f} at the start and {os.getloadavg()[0]:.2f} at the end"
    print(machine_line(args.device, loads))
    measured = [r for r in rows if "seconds" in r]
    threads = measured[0]["threads"] if measured else torch.get_num_threads()
    parameters = {r["feature_size"]: r["parameters_m"] for r in measured}
    sizes = ", ".join(f"{fs}: {parameters[fs]:.1f} M" if fs in parameters else str(fs) for fs in args.feature_size)
    print(
        f"Alice, SwinUNETR feature_size {sizes} parameters (student, teacher, heads, CASA), AdamW; "
        f"{threads} torch threads; median of {args.repeats} "
        f"step(s) after {args.warmup} warm-up; mining on {'×'.join(map(str, args.volume))} float32 "
        "memory-mapped volumes\n"
    )
    memory = "max allocated" if args.device == "cuda" else "peak RSS"
    print(table(rows, memory))
    return rows


if __name__ == "__main__":
    main()
