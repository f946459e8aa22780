"""Where a Joint 2D/3D training step (Nguyen et al., AAAI 2023) spends its time and memory, and what the
DeepCluster-v2 k-means at each epoch start costs.

Usage::

    python benchmarks/bench_joint_2d3d.py                       # the paper: ResNet-50, 4 × 64×128×128, CPU
    python benchmarks/bench_joint_2d3d.py --backbone resnet18 --repeats 1
    python benchmarks/bench_joint_2d3d.py --device cuda
    python benchmarks/bench_joint_2d3d.py --quick               # resnet18 ×0.25, 2 × 8×32×32, bank 200

The model is :class:`~medssl.methods.joint_2d3d.JointIntraInter` with its defaults, the paper's joint
recipe: f_intra a ResNet-50 slice by slice, multi-scale pooled (5,888 features) and projected to d_model
640; f_inter 4 deformable-attention layers (FFN 720, 8 heads); L_intra SwAV on the slices (3000
prototypes, 3 Sinkhorn iterations); L_inter DeepCluster-v2 on the volume embeddings (``--clusters``, K
per head, on a memory bank of ``--bank`` volumes filled with random unit vectors and clustered before the
step, so every sample has a pseudo-label); L_mask 10 % of the slices; LARS (the method's own
``configure_optimizers`` groups). Prototypes train from the first step (``freeze_prototypes_steps=0``,
the steady state). Inputs are one fixed random batch (no data loading or augmentation).

How the parts are timed. ``torch.profiler``'s ``record_function`` ranges cover forward code only; the
backward runs later in autograd's engine, so it cannot be split by part that way. Each part is therefore
run on its own, forward and its own backward, on the inputs the step hands it (for the parts after
f_intra: its slice tokens detached into leaves that require a gradient, so the backward into them is
counted, as in the step), with fixed cotangents where a part ends in a tensor rather than a loss:

- ``f_intra``: the 2D encoder, multi-scale pooling and projection over the B×N slices of both views;
- ``f_inter (Z)``: the transformer on both views' tokens, as the step runs it for the volume embeddings;
- ``L_intra``: slice projector MLP, prototype scores, Sinkhorn and swapped prediction; the row under it
  is Sinkhorn + swapped prediction alone, on fixed scores;
- ``L_inter``: DeepCluster-v2 scores against every head, cross-entropy and the memory-bank write;
- ``L_mask``: mask token, the transformer on both masked views (its second pair of passes), head, MSE.

In the step autograd adds the three losses' gradients at the tokens and runs f_intra's backward once,
so the parts add up to the step's forward + backward; ``sum of parts`` against the measured step says
how well they do. The whole step is then timed as Lightning runs it (``on_train_batch_start``,
``training_step``, ``zero_grad``, backward, ``on_after_backward``, LARS step), forward / backward / optimiser
apart. Every figure is the median of ``--repeats`` after one warm-up; on CUDA every boundary synchronises.

Memory is that of one training step (the first, which also creates LARS's momentum buffers): on CUDA
``torch.cuda.max_memory_allocated`` (``peak``) and its growth over the allocation before the step
(``Δ``); on CPU the process's peak RSS (``ru_maxrss``, imports, model and bank included) and its growth
over the peak RSS before the step. Each attention axis runs in a fresh process, so the figures of one do
not hide the other's. ``--attention-axis features`` is the released code's axis (the attention reads the
64 slices as channels over a sequence of 640 features): its relative-position MLP runs on
``[B, 8, 640, 160]`` offsets, the slices axis on ``[B, 8, 64, 16]``.

k-means: :meth:`ClusterMemory.cluster` (spherical k-means, 10 iterations, every head on its view's bank)
on ``--bank`` random unit vectors of d_model 640, for the heads of ``--clusters`` and, one head each,
every K of ``--extra-k``. :meth:`ClusterMemory.synchronise` is timed too: on one process it returns at
once (it merges the banks across ranks under DDP), so its figure here is not what DDP pays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from medssl.losses import sinkhorn_knopp, swapped_prediction
from medssl.losses.deepcluster import ClusterMemory
from medssl.methods.joint_2d3d import JointIntraInter
from medssl.nn.volume_encoder import SliceStack

QUICK = dict(backbone="resnet18", width=0.25, size=[8, 32, 32], batch=2, bank=200)
PARTS = ("f_intra", "f_inter (Z)", "L_intra", "  Sinkhorn + swapped", "L_inter", "L_mask")
STEP = ("forward", "backward", "optimiser", "step")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def machine(device: torch.device) -> str:
    """One line on the host (bench_training's record of it), with the torch thread count."""
    from bench_training import machine_line  # a sibling script: benchmarks/ is on sys.path when run

    load = f"load average {os.getloadavg()[0]:.2f}"
    return machine_line(device.type, f"{torch.get_num_threads()} torch threads, {load}")


# -- the model and its inputs ------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace, axis: str) -> JointIntraInter:
    slices = args.size[0]
    transformer = {"attention_axis": axis, "n_slices": slices if axis == "features" else None}
    backbone = {"name": args.backbone, "spatial_dims": 2, "in_channels": args.channels, "width": args.width}
    return JointIntraInter(
        backbone=backbone, transformer=transformer, inter_clusters=list(args.clusters), freeze_prototypes_steps=0
    )


def clustered_memory(size: int, dim: int, clusters: list[int], iterations: int, device: torch.device) -> ClusterMemory:
    """A DeepCluster-v2 bank of ``size`` random unit embeddings per view, written as the step writes them."""
    memory = ClusterMemory(size, dim, clusters, views=2, iterations=iterations).to(device)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, size, 1024):
        index = torch.arange(start, min(start + 1024, size))
        memory.store(index.to(device), [torch.randn(len(index), dim, generator=generator).to(device) for _ in range(2)])
    return memory


def random_batch(args: argparse.Namespace, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(1)
    shape = (args.batch, args.channels, *args.size)
    views = [torch.rand(shape, generator=generator).to(device) for _ in range(2)]
    return {"views": views, "index": torch.arange(args.batch, device=device)}


# -- timing ------------------------------------------------------------------------------------------------------
def leaves(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().requires_grad_(True) for t in tensors]


def backward(outputs: torch.Tensor | list[torch.Tensor]) -> None:
    """A loss's backward, or a part's with unit cotangents on its output tensors."""
    if isinstance(outputs, torch.Tensor) and outputs.ndim == 0:
        outputs.backward()
    else:
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])


def part_times(model: JointIntraInter, batch: dict, device: torch.device) -> dict[str, float]:
    """Forward + backward of each part on its own (see the module docstring)."""
    h, views, index, prototypes = model.hparams, batch["views"], batch["index"], model.intra_prototypes
    if prototypes is None:
        raise ValueError("the benchmark times SwAV on the slices (intra_clustering='swav')")
    times: dict[str, float] = {}

    def timed(name: str, part: Callable[[], torch.Tensor | list[torch.Tensor]]) -> None:
        model.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        backward(part())
        sync(device)
        times[name] = time.perf_counter() - start

    with torch.no_grad():
        tokens = [model.slice_embeddings(v) for v in views]
        projections = [F.normalize(model.intra_projector(x.flatten(0, 1)), dim=1) for x in tokens]
        scores = leaves([prototypes(p) for p in projections])
        volumes = [SliceStack.volume_embedding(model.f_inter(x)) for x in tokens]

    def sinkhorn_and_swap() -> torch.Tensor:
        codes = [sinkhorn_knopp(s.detach(), h.epsilon, h.sinkhorn_iterations) for s in scores]
        return swapped_prediction(scores, codes, h.temperature)

    timed("f_intra", lambda: [model.slice_embeddings(v) for v in views])
    timed("f_inter (Z)", lambda: [model.f_inter(x) for x in leaves(tokens)])
    timed("L_intra", lambda: model.intra_loss(leaves(tokens), index))
    timed("  Sinkhorn + swapped", sinkhorn_and_swap)
    timed("L_inter", lambda: model.inter_loss(leaves(volumes), index))
    timed("L_mask", lambda: model.mask_loss(leaves(tokens)))
    model.zero_grad(set_to_none=True)
    return times


def step_times(
    model: JointIntraInter, optimizer: torch.optim.Optimizer, batch: dict, device: torch.device
) -> dict[str, float]:
    """One training step in Lightning's order of automatic optimisation, forward / backward / optimiser apart."""
    model.on_train_batch_start(batch, 0)
    sync(device)
    start = time.perf_counter()
    loss = model.training_step(batch, 0)
    sync(device)
    forward_done = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    model.on_after_backward()
    sync(device)
    backward_done = time.perf_counter()
    optimizer.step()
    sync(device)
    end = time.perf_counter()
    return {
        "forward": forward_done - start,
        "backward": backward_done - forward_done,
        "optimiser": end - backward_done,
        "step": end - start,
    }


def measure_step(args: argparse.Namespace, axis: str) -> dict:
    """One attention axis, in its own process: memory of the first step, then the medians."""
    warnings.filterwarnings("ignore")  # self.log without a Trainer warns once
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args, axis).to(device).train()
    h = model.hparams
    model.memories["inter"] = clustered_memory(args.bank, h.d_model, list(args.clusters), h.kmeans_iterations, device)
    model.memory("inter").cluster(seed=0)
    from bench_training import method_optimizer  # a sibling script: benchmarks/ is on sys.path when run

    optimizer = method_optimizer(model)  # LARS and its parameter groups
    batch = random_batch(args, device)

    sync(device)
    before = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    log(f"  {axis}: first step (memory) ...")
    step_times(model, optimizer, batch, device)
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mib()

    log(f"  {axis}: parts warm-up ...")
    part_times(model, batch, device)
    runs = []
    for r in range(args.repeats):
        log(f"  {axis}: repeat {r + 1}/{args.repeats} ...")
        runs.append({**part_times(model, batch, device), **step_times(model, optimizer, batch, device)})
    medians = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    spread = {name: (min(run[name] for run in runs), max(run[name] for run in runs)) for name in runs[0]}
    stack = model.stack
    return {
        "axis": axis,
        "seconds": medians,
        "spread": spread,
        "peak_mib": peak,
        "delta_mib": peak - before,
        "threads": torch.get_num_threads(),
        "encoder": model.encoder.config(),
        "pooled_features": stack.projection.in_features,
        "transformer": stack.transformer.config(),
        "parameters_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }


def kmeans_times(args: argparse.Namespace, heads: list[int], device: torch.device, d_model: int) -> dict:
    memory = clustered_memory(args.bank, d_model, heads, args.kmeans_iterations, device)
    synchronise, cluster = [], []
    for r in range(args.repeats + 1):
        sync(device)
        start = time.perf_counter()
        memory.synchronise()
        sync(device)
        middle = time.perf_counter()
        memory.cluster(seed=r)
        sync(device)
        if r:  # the first is the warm-up
            synchronise.append(middle - start)
            cluster.append(time.perf_counter() - middle)
    return {"heads": heads, "synchronise": statistics.median(synchronise), "cluster": statistics.median(cluster)}


# -- driver ------------------------------------------------------------------------------------------------------
def run_child(axis: str, argv: list[str]) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--child", axis]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"attention axis {axis} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_table(result: dict) -> str:
    seconds, spread = result["seconds"], result["spread"]
    step = seconds["step"]
    parts = sum(seconds[name] for name in PARTS if not name.startswith(" "))
    rows = [(name, seconds[name], spread[name]) for name in PARTS] + [("sum of parts (fwd + bwd)", parts, None)]
    rows += [(f"step: {'total' if name == 'step' else name}", seconds[name], spread[name]) for name in STEP]
    lines = [f"{'part (forward + backward)':<28}{'ms':>10}{'min–max ms':>17}{'% of step':>11}", "-" * 66]
    for name, value, extremes in rows:
        span = "" if extremes is None else f"{1e3 * extremes[0]:.0f}–{1e3 * extremes[1]:.0f}"
        lines.append(f"{name:<28}{1e3 * value:>10.0f}{span:>17}{100 * value / step:>10.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backbone", choices=("resnet18", "resnet50"), default="resnet50", help="f_intra")
    parser.add_argument("--width", type=float, default=1.0, help="ResNet channel multiplier")
    parser.add_argument("--channels", type=int, default=1, help="input channels (the reference repeats CT to 3)")
    parser.add_argument("--size", type=int, nargs=3, default=[64, 128, 128], metavar=("N", "H", "W"))
    parser.add_argument("--batch", type=int, default=4, help="volumes per view")
    parser.add_argument("--clusters", type=int, nargs="+", default=[30, 30, 30], help="L_inter: K per head")
    parser.add_argument("--extra-k", type=int, nargs="*", default=[3000], help="more k-means runs, one head each")
    parser.add_argument("--bank", type=int, default=10000, help="volumes in the DeepCluster memory bank")
    parser.add_argument("--kmeans-iterations", type=int, default=10)
    parser.add_argument("--attention-axis", nargs="+", choices=("slices", "features"), default=["slices", "features"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny setting for a smoke run: " + str(QUICK))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.child:
        print(json.dumps(measure_step(args, args.child)))
        return []
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.2f}: other processes share the cores, timings suffer")

    device = torch.device(args.device)
    passed = list(sys.argv[1:] if argv is None else argv)
    print(machine(device))
    n, height, width = args.size
    print(
        f"batch {args.batch} volumes × 2 views of {n}×{height}×{width} ({args.channels} channel), "
        f"{2 * args.batch * n} slices through f_intra per step; median of {args.repeats} after 1 warm-up"
    )
    results = []
    for axis in args.attention_axis:
        log(f"attention axis {axis} ...")
        results.append(run_child(axis, passed))
        result = results[-1]
        if len(results) == 1:
            e, t = result["encoder"], result["transformer"]
            print(
                f"model: f_intra {e['name']} ×{e.get('width', 1.0)}, multi-scale {result['pooled_features']} → "
                f"d_model {t['d_model']}; f_inter {t['layers']} layers, FFN {t['ffn_dim']}, {t['heads']} heads; "
                f"SwAV intra 3000 prototypes; DeepCluster inter K {list(args.clusters)} on a bank of {args.bank}; "
                f"LARS; {result['parameters_m']:.1f} M trained parameters; {result['threads']} threads"
            )
        kind = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS"
        print(f"\nattention across {axis}:")
        print(step_table(result))
        print(f"one step's memory ({kind}): peak {result['peak_mib']:.0f} MiB, Δ {result['delta_mib']:.0f} MiB")

    if len(results) > 1:
        print(
            f"\n{'attention axis':<16}{'f_inter (Z) ms':>15}{'L_mask ms':>11}{'step ms':>10}"
            f"{'peak MiB':>10}{'Δ MiB':>8}"
        )
        for r in results:
            s = r["seconds"]
            print(
                f"{r['axis']:<16}{1e3 * s['f_inter (Z)']:>15.0f}{1e3 * s['L_mask']:>11.0f}{1e3 * s['step']:>10.0f}"
                f"{r['peak_mib']:>10.0f}{r['delta_mib']:>8.0f}"
            )

    d_model = results[0]["transformer"]["d_model"] if results else 640
    print(
        f"\nk-means at epoch start: ClusterMemory of {args.bank} volumes × 2 views × d {d_model}, "
        f"{args.kmeans_iterations} iterations; synchronise() is a no-op on one process (it merges ranks under DDP)"
    )
    print(f"{'K per head':<20}{'cluster() ms':>14}{'per head ms':>13}{'synchronise() ms':>18}")
    runs = [list(args.clusters)] + [[k] for k in args.extra_k]
    for heads in runs:
        if args.bank < max(heads):
            print(f"{str(heads):<20} skipped: the bank holds {args.bank} volumes, fewer than K = {max(heads)}")
            continue
        log(f"k-means {heads} ...")
        t = kmeans_times(args, heads, device, d_model)
        print(
            f"{str(heads):<20}{1e3 * t['cluster']:>14.1f}{1e3 * t['cluster'] / len(heads):>13.1f}"
            f"{1e3 * t['synchronise']:>18.3f}"
        )
    return results


if __name__ == "__main__":
    main()
