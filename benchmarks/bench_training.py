"""Training-step throughput and peak memory of medssl's SSL methods against the same step with MONAI's losses.

Usage::

    python benchmarks/bench_training.py                        # resnet18, batch 32, two 96² views, CPU
    python benchmarks/bench_training.py --threads 1            # when other processes share the cores
    python benchmarks/bench_training.py --device cuda --batch 256 --size 224
    python benchmarks/bench_training.py --end-to-end --steps 10 # cache → loader → views → step, CPU vs device views

A *step* is what a training iteration costs with the data already in memory: both views forward through
encoder + projector, the loss, backward, and an AdamW step. Rows (same backbone, projector, batch and
optimiser; only the loss differs between the two implementations of one method):

``medssl``  the method's own ``training_step`` (plus the Lightning hooks a Trainer calls around it:
            ``on_train_batch_start``, ``on_after_backward``, ``on_train_batch_end``), called without a
            Trainer, so ``self.log`` is a no-op and Lightning's loop/logging overhead is not counted.
``MONAI``   the same step written by hand as ``TwoViewMethod.training_step`` is, with
            ``monai.losses.ContrastiveLoss`` (SimCLR, as MONAI's SSL tutorials use) or
            ``monai.losses.BarlowTwinsLoss`` in place of medssl's loss. SwAV has no MONAI counterpart.

``loss ms`` is forward + backward of the loss alone on fixed projector outputs (for SwAV: prototype scores,
Sinkhorn codes and swapped prediction), and ``loss %`` that time as a share of the median step. The targets
(issue): the medssl step no slower than the MONAI-loss step, and the loss under 5 % of the step.

Each configuration runs in a fresh subprocess so that memory figures do not leak between them: on CPU
``peak MiB`` is the process's peak RSS (``ru_maxrss``, imports and model included) and ``Δ MiB`` its growth
over the RSS before the first step (activations, gradients, optimiser state); on CUDA both come from
``torch.cuda.max_memory_allocated``. Throughput is the median over ``--repeats`` timings of ``--steps`` steps
each, after ``--warmup`` steps, with the spread as min–max over the repeats. Inputs are one fixed random
batch (no data loading, no augmentation: see bench_loader.py for those).

**End to end** (``--end-to-end``): the whole path, cache → loader → views → step, for each of ``--configs``
(SimCLR on tiles, the joint 2D/3D method on slice stacks, Alice on corresponding crops), with views made
per sample in the DataLoader workers (``views_on="cpu"``) and with device views (``views_on="device"``:
the workers read and draw, ``on_after_batch_transfer`` makes the batch's views; on a CPU that is the
training process). Synthetic caches come from bench_gpu.py (224² tiles of synthetic slides, CT phantoms)
and the networks are its toy ones (quarter-width ResNet-18, a one-block SwinUNETR) so views and loading
weigh as much as they would against a GPU's compute. Two tables:

``end to end``  ``medssl fit`` of the config for ``--warmup`` + ``--steps`` steps with ``--workers`` loader
                workers and :class:`~medssl.methods.callbacks.StepTimer`: samples/s, the same per core (÷
                workers + the training process), and the step split data wait / views / compute.
``views alone`` one thread, per sample, from the real training datasets with the same keys: ``read`` (the
                dataset without views), the CPU path's views (``read + views`` − read), the device path's
                draw on the loader (``read + draw`` − read) and its batched apply per sample (the
                DataModule's hook on collated batches of ``--batch``, in the cache-sized pieces it uses on a
                CPU); ``ratio`` = CPU views ÷ (draw + apply), the issue's target being ≥ 5 ("-" where a side
                is under 0.1 ms, within the noise of the subtraction). Alice's pairs
                are cut by the correspondence sampler in both paths, so there ``read`` holds the crops
                and the views are the flips and turns.

A config whose views cannot run on the device yet gets its error as its row. JSON goes to ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

METHODS: dict[str, tuple[str, str, dict]] = {  # name: (module, class, constructor overrides)
    "simclr": ("medssl.methods.simclr", "SimCLR", {}),
    "barlow_twins": ("medssl.methods.barlow_twins", "BarlowTwins", {}),
    # steady state: the prototypes train (the first epoch's freeze only drops their gradient)
    "swav": ("medssl.methods.swav", "SwAV", {"freeze_prototypes_steps": 0}),
}
MONAI_LOSSES = ("simclr", "barlow_twins")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import monai

    out = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "device": device,
    }
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    return out


# -- one configuration (runs in its own process) ------------------------------------------------------------
def build(method: str, args: argparse.Namespace) -> torch.nn.Module:
    module, name, overrides = METHODS[method]
    cls = getattr(importlib.import_module(module), name)
    backbone = {"name": args.backbone, "spatial_dims": 2, "in_channels": 3}
    return cls(backbone=backbone, **overrides)


def losses(method: str, implementation: str, model: torch.nn.Module) -> tuple[Callable, Callable]:
    """(full-step loss of a batch, loss of fixed projector outputs z1, z2) for one implementation."""
    if method == "swav":
        from medssl.losses import swapped_prediction

        def head_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:  # SwAV.training_step after the projector
            projections = [F.normalize(z, dim=1) for z in (z1, z2)]
            scores = [model.prototypes(z) for z in projections]
            codes = [model.assign(i, projections[i], scores[i]) for i in range(2)]
            return swapped_prediction(scores, codes, model.hparams.temperature)

        return model.training_step, head_loss
    if implementation == "medssl":
        return model.training_step, model.pair_loss
    from monai.losses import BarlowTwinsLoss, ContrastiveLoss

    loss = (
        ContrastiveLoss(temperature=model.hparams.temperature)
        if method == "simclr"
        else BarlowTwinsLoss(lambd=model.hparams.lambd)
    )

    def step_loss(batch: dict, batch_idx: int) -> torch.Tensor:  # TwoViewMethod.training_step, MONAI's loss
        view1, view2 = batch["views"][:2]
        return loss(model.projector(model.embed(view1)), model.projector(model.embed(view2)))

    return step_loss, loss


def machine_line(device: str, middle: str) -> str:
    """``machine: <cpu>, <n> cores (<m> usable), <middle>, python …, torch …, monai …, device <device>``:
    the one-line host record the step benchmarks print (``middle``: their threads and load)."""
    info = machine(device)
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return (
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {middle}, python "
        f"{info['python']}, torch {info['torch']}, monai {info['monai']}, device {device}{gpu}"
    )


def method_optimizer(model) -> torch.optim.Optimizer:
    """A method's own optimiser outside a Trainer. ``configure_optimizers`` sizes the schedule from the
    trainer; a stand-in with its two figures is attached for the call only, so ``self.log`` stays a
    no-op in the step."""
    from types import SimpleNamespace

    stand_in = SimpleNamespace(estimated_stepping_batches=1000, max_epochs=100)
    setattr(model, "_trainer", stand_in)  # noqa: B010  (the attribute is typed Trainer; the stand-in is not one)
    try:
        return model.configure_optimizers()["optimizer"]
    finally:
        setattr(model, "_trainer", None)  # noqa: B010


def resident_mib(pid: int) -> float:
    """A process's resident memory now, MiB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(float(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0


def run_setting(script: str, passed: list[str], setting: dict, limit_mib: float, extra: tuple[str, ...] = ()) -> dict:
    """``script passed... --child <setting> extra...`` in a fresh process (one setting's peak memory is its
    own), stopped if its resident memory passes ``limit_mib``; the JSON the child printed last, or the
    setting with an ``error``."""
    command = [sys.executable, os.path.abspath(script), *passed, "--child", json.dumps(setting), *extra]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    while child.poll() is None:
        if resident_mib(child.pid) > limit_mib:
            child.kill()
            child.wait()
            return {**setting, "error": f"stopped: resident memory passed {limit_mib / 1024:.0f} GB"}
        time.sleep(0.2)
    out = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        return {**setting, "error": f"failed (exit code {child.returncode})"}
    return json.loads(out.strip().splitlines()[-1])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(method: str, implementation: str, args: argparse.Namespace) -> dict:
    warnings.filterwarnings("ignore")  # self.log without a Trainer warns once; MONAI's import-time notices
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    model = build(method, args).to(device).train()
    step_loss, loss_of = losses(method, implementation, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    batch = {"views": [torch.rand(args.batch, 3, args.size, args.size, device=device) for _ in range(2)]}

    def step(i: int) -> None:  # the order of Lightning's automatic optimisation
        model.on_train_batch_start(batch, i)
        loss = step_loss(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.on_after_backward()
        optimizer.step()
        model.on_train_batch_end({"loss": loss}, batch, i)

    sync(device)
    before = rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    for i in range(args.warmup):
        step(i)
    sync(device)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(args.steps):
            step(i)
        sync(device)
        seconds.append((time.perf_counter() - start) / args.steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else rss_mib()

    with torch.no_grad():  # fixed projector outputs for the loss alone
        z1, z2 = (model.projector(model.embed(view)) for view in batch["views"])
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss_seconds = []
    for k in range(args.loss_calls + 3):
        z1.grad = z2.grad = None
        sync(device)
        start = time.perf_counter()
        loss_of(z1, z2).backward()
        sync(device)
        if k >= 3:
            loss_seconds.append(time.perf_counter() - start)
    out = {
        "method": method,
        "implementation": implementation,
        "encoder": model.encoder.config(),
        "threads": torch.get_num_threads(),
        "step_s": seconds,
        "loss_s": statistics.median(loss_seconds),
        "peak_mib": peak,
        "delta_mib": peak - before,
    }
    if implementation == "MONAI":  # are the two losses the same function? (values on the same projections)
        with torch.no_grad():
            out["loss_values"] = {"medssl": float(model.pair_loss(z1, z2)), "MONAI": float(loss_of(z1, z2))}
    return out


# -- end to end -------------------------------------------------------------------------------------------
E2E_CONFIGS = ("simclr_tiles", "joint_2d3d", "alice")


def e2e_scale(args: argparse.Namespace):
    """bench_gpu.py's toy networks on inputs a CPU can take in seconds per step: 224² tiles viewed at
    ``--size``, batch ``--batch``; 16 × 64 × 64 stacks, 32 × 32 × 64 crops."""
    from bench_gpu import TOY  # a sibling script: benchmarks/ is on sys.path when run

    return dataclasses.replace(
        TOY,
        name="cpu-e2e",
        tile=224,
        view=args.size,
        tile_batch=args.batch,
        slide_px=8192,
        stack=(16, 64, 64),
        volumes=8,
        volume_shape=(128, 112, 48),
        workers=args.workers,
    )


def e2e_options(args: argparse.Namespace, views_on: str) -> argparse.Namespace:
    """What bench_gpu.fit_arguments/run_config read: CPU, 32-bit, no speed switches (none helps a CPU)."""
    return argparse.Namespace(
        views_on=views_on,
        precision="32-true",
        channels_last=False,
        compile=False,
        cpu=True,
        warmup=args.warmup,
        steps=args.steps,
        work_dir=args.work_dir,
    )


def seconds_per_item(dataset: Any, keys: Sequence, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean time of ``dataset[key]`` over ``keys``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for key in keys:
            dataset[key]
        times.append((time.perf_counter() - start) / len(keys))
    return statistics.median(times)


def views_alone(config: Path, scale, caches, args: argparse.Namespace) -> dict:
    """Per sample on one thread: reading, the CPU path's views, the device path's draw and batched apply
    (see the module docstring), from the training datasets both DataModules build for ``config``."""
    from bench_gpu import fit_arguments

    from medssl.cli import run_lightning
    from medssl.data.view_ops import apply_device_views

    modules = {}
    for views_on in ("cpu", "device"):
        options = e2e_options(args, views_on)
        cli = run_lightning(fit_arguments(config, scale, caches, options, args.work_dir / "runs")[1:], run=False)
        cli.datamodule.setup("fit")
        modules[views_on] = cli.datamodule
    cpu, device = modules["cpu"].datasets["train"], modules["device"].datasets["train"]
    raw = copy.copy(cpu)
    raw.transform = None
    count = min(args.samples, len(cpu))
    keys = [(index, 0) for index in range(count)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        read, cpu_item, device_item = (seconds_per_item(d, keys) for d in (raw, cpu, device))
        collate = modules["device"].train_dataloader().collate_fn
        items = [device[key] for key in keys]
        batch = min(int(modules["device"].batch_size), count)  # the loader's batches
        batches = [collate(items[i : i + batch]) for i in range(0, count - batch + 1, batch)]
        apply_device_views(modules["device"].device_views, batches[0])  # warm-up
        start = time.perf_counter()
        for collated in batches:
            apply_device_views(modules["device"].device_views, collated)
        apply = (time.perf_counter() - start) / (len(batches) * batch)
    finally:
        torch.set_num_threads(threads)
    # what a sample costs beyond reading it; 0 where that is below the timing noise (Alice's views are
    # flips, cheaper than the spread of re-reading a crop)
    cpu_views, draw = max(0.0, cpu_item - read), max(0.0, device_item - read)
    return {
        "config": config.stem,
        "samples": count,
        "batch": batch,
        "read_ms": 1e3 * read,
        "cpu_views_ms": 1e3 * cpu_views,
        "draw_ms": 1e3 * draw,
        "apply_ms": 1e3 * apply,
        # only where both sides are above the timing noise (Alice's flips cost less than re-reading a crop)
        "ratio": cpu_views / (draw + apply) if min(cpu_views, draw + apply) > 1e-4 else None,
    }


def e2e_table(rows: list[dict], alone: list[dict]) -> str:
    header = (
        f"{'config':<14} {'views on':<8} {'input':<22} {'samples/s':>9} {'per core':>8} {'step ms':>8} "
        f"{'data':>7} {'views':>7} {'compute':>8} {'stall':>6}"
    )
    lines = ["end to end", header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['config']:<14} {r['views_on']:<8} {r['error']}")
            continue
        lines.append(
            f"{r['config']:<14} {r['views_on']:<8} {r['input']:<22} {r['samples_per_s']:>9.1f} "
            f"{r['per_core']:>8.1f} {r['step_ms']:>8.0f} {r['data_ms']:>7.0f} {r['views_ms']:>7.0f} "
            f"{r['compute_ms']:>8.0f} {100 * r['stall']:>5.1f}%"
        )
    header = f"{'config':<14} {'read ms':>8} {'CPU views ms':>12} {'draw ms':>8} {'apply ms':>9} {'ratio':>6}"
    lines += ["", "views alone, per sample, one thread", header, "-" * len(header)]
    for r in alone:
        if "error" in r:
            lines.append(f"{r['config']:<14} {r['error']}")
            continue
        lines.append(
            f"{r['config']:<14} {r['read_ms']:>8.2f} {r['cpu_views_ms']:>12.2f} {r['draw_ms']:>8.3f} "
            f"{r['apply_ms']:>9.2f} {'-' if r['ratio'] is None else format(r['ratio'], '.1f') + '×':>6}"
        )
    return "\n".join(lines)


def end_to_end(args: argparse.Namespace) -> dict:
    from bench_gpu import build_caches, config_kind, error_line, run_config, select

    configs = select(args.configs)
    scale = e2e_scale(args)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    caches = build_caches({config_kind(c) for c in configs}, args.work_dir / scale.name, scale, workers=1)
    rows, alone = [], []
    for config in configs:
        for views_on in ("cpu", "device"):
            log(f"{config.stem}, views on {views_on} ...")
            row = run_config(config, scale, caches, e2e_options(args, views_on))
            row["views_on"], row["workers"] = views_on, args.workers
            if "samples_per_s" in row:
                row["per_core"] = row["samples_per_s"] / (args.workers + 1)
            rows.append(row)
        log(f"{config.stem}, views alone ...")
        try:
            alone.append(views_alone(config, scale, caches, args))
        except Exception as error:  # noqa: BLE001 - views not device-capable yet: the row says so
            alone.append({"config": config.stem, "error": error_line(error)})
    report = {
        "machine": machine("cpu"),
        "scale": dataclasses.asdict(scale),
        "workers": args.workers,
        "steps": args.steps,
        "warmup": args.warmup,
        "end_to_end": rows,
        "views_alone": alone,
    }
    print(machine_line("cpu", f"{args.workers} loader worker(s), load {os.getloadavg()[0]:.2f}"))
    print(f"toy networks (bench_gpu.py), 32-bit; means over {args.steps} steps after {args.warmup}\n")
    print(e2e_table(rows, alone))
    out = args.json or args.work_dir / "e2e.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nJSON: {out}")
    return report


# -- driver -------------------------------------------------------------------------------------------------
def run_child(method: str, implementation: str, argv: list[str]) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--child", f"{method}:{implementation}"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method}/{implementation} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], batch: int) -> str:
    header = (
        f"{'method':<13} {'impl':<7} {'samples/s':>9} {'spread':>13} {'step ms':>8} {'loss ms':>8} "
        f"{'loss %':>7} {'peak MiB':>9} {'Δ MiB':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        step = statistics.median(r["step_s"])
        rates = sorted(batch / s for s in r["step_s"])
        lines.append(
            f"{r['method']:<13} {r['implementation']:<7} {batch / step:>9.1f} "
            f"{f'{rates[0]:.1f}–{rates[-1]:.1f}':>13} {1e3 * step:>8.0f} {1e3 * r['loss_s']:>8.2f} "
            f"{100 * r['loss_s'] / step:>6.2f}% {r['peak_mib']:>9.0f} {r['delta_mib']:>7.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", help="medssl build_encoder name (2D, 3 channels)")
    parser.add_argument("--batch", type=int, default=32, help="images per view")
    parser.add_argument("--size", type=int, default=96, help="view height and width")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loss-calls", type=int, default=20, help="timed calls of the loss alone")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    e2e = parser.add_argument_group("end to end (--end-to-end)")
    e2e.add_argument("--end-to-end", action="store_true", help="cache → loader → views → step, CPU vs device views")
    e2e.add_argument("--configs", nargs="+", default=list(E2E_CONFIGS), help="configs/pretrain names")
    e2e.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    e2e.add_argument("--samples", type=int, default=64, help="samples timed for 'views alone'")
    e2e.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "medssl-bench-e2e")
    e2e.add_argument("--json", type=Path, help="where the end-to-end JSON goes (default: <work-dir>/e2e.json)")
    args = parser.parse_args(argv)
    if args.end_to_end:
        return [end_to_end(args)]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.child:
        print(json.dumps(measure(*args.child.split(":"), args)))
        return []

    if args.device == "cpu" and os.getloadavg()[0] > 0.5:
        log(
            f"warning: load average {os.getloadavg()[0]:.2f} before starting: other processes share the cores; "
            "multi-threaded timings suffer badly from that, consider --threads"
        )
    passed = list(sys.argv[1:] if argv is None else argv)
    rows, notes = [], []
    for method in args.methods:
        try:
            importlib.import_module(METHODS[method][0])
        except Exception as error:  # noqa: BLE001 - a method being written may not import yet
            notes.append(f"{method}: skipped, {METHODS[method][0]} does not import ({type(error).__name__}: {error})")
            continue
        for implementation in ("medssl", "MONAI") if method in MONAI_LOSSES else ("medssl",):
            log(f"{method} / {implementation} ...")
            rows.append(run_child(method, implementation, passed))
            log(f"  {args.batch / statistics.median(rows[-1]['step_s']):.1f} samples/s")

    info = machine(args.device)
    print(
        f"machine: {info.pop('cpu')}, {info.pop('cores')} cores "
        f"({info.pop('usable_cores')} usable), {', '.join(f'{k} {v}' for k, v in info.items())}"
    )
    if rows:
        print(f"encoder: {rows[0]['encoder']}, threads {rows[0]['threads']}")
    print(
        f"batch {args.batch} × 2 views of 3×{args.size}², AdamW; median of {args.repeats} × {args.steps} steps "
        f"after {args.warmup} warm-up; spread = min–max samples/s over the repeats\n"
    )
    print(table(rows, args.batch))
    print()
    by_key = {(r["method"], r["implementation"]): r for r in rows}
    for method in MONAI_LOSSES:
        if (method, "medssl") in by_key and (method, "MONAI") in by_key:
            ours, theirs = by_key[method, "medssl"], by_key[method, "MONAI"]
            ratio = statistics.median(theirs["step_s"]) / statistics.median(ours["step_s"])
            values = theirs["loss_values"]
            print(
                f"{method}: medssl step throughput = {ratio:.3f} × MONAI-loss step; loss alone "
                f"{1e3 * ours['loss_s']:.2f} ms (medssl) vs {1e3 * theirs['loss_s']:.2f} ms (MONAI); "
                "value on the same projections "
                f"medssl {values['medssl']:.6g} vs MONAI {values['MONAI']:.6g}"
            )
    for note in notes:
        print(note)
    return rows


if __name__ == "__main__":
    main()
