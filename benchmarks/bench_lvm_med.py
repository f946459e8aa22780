"""Where an LVM-Med training step spends its time: backbone, projector + GCN, affinities, the matching
solve (Gumbel + second-order solver), and backward (which holds I-MLE's second solve, timed apart).

Usage::

    python benchmarks/bench_lvm_med.py                          # ResNet-50, 64² views, batch 64 and 256, CPU
    python benchmarks/bench_lvm_med.py --size 224 --device cuda # the paper's view size on a GPU

The step is ``LVMMed.training_step`` taken apart, calling the method's own functions in its order, with
random images and random view geometries. The issue's target: the matching (affinities + solver forward
+ I-MLE's second solve) under 20 % of the step at 16 nodes on a ResNet-50.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import contextmanager

import torch

import medssl.matching.imle as imle
from medssl.data.geometric_views import GeometricViewsd, RandGeometricViewd
from medssl.geometry import cell_centres
from medssl.losses import edge_affinity, global_affinity, hamming, local_affinity
from medssl.matching import edges_from_adjacency, graph_matching, imle_matching
from medssl.methods import lvm_med
from medssl.nn.graph import knn_adjacency


def one_step(model: lvm_med.LVMMed, batch: dict, device: torch.device) -> dict[str, float]:
    h, times = model.hparams, {}

    @contextmanager
    def timed(name: str):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[name] = times.get(name, 0.0) + time.perf_counter() - start

    solves = []
    real_solve = imle._solve

    def counted(*args):  # the I-MLE backward's solve is the second call
        start = time.perf_counter()
        out = real_solve(*args)
        solves.append(time.perf_counter() - start)
        return out

    imle._solve = counted
    try:
        with timed("backbone"):
            (ps, ms), (pt, mt) = (model.encoder.forward_features(v) for v in batch["views"])
        graphs = len(ps) // h.graph_size
        nodes = lambda x: x.reshape(graphs, h.graph_size, *x.shape[1:])  # noqa: E731
        with timed("projector + GCN"):
            zs, zt = nodes(model.projector(ps)), nodes(model.projector(pt))
            a_s, a_t = knn_adjacency(zs.detach(), h.knn), knn_adjacency(zt.detach(), h.knn)
            zs, zt = model.gcn(zs, a_s), model.gcn(zt, a_t)
        with timed("affinities"):
            grid = tuple(ms.shape[2:])
            cs, ct = (nodes(m.flatten(2).transpose(1, 2)) for m in (ms, mt))
            gs, gt = (nodes(cell_centres(g, grid)) for g in batch["geometry"])
            local = local_affinity(cs, ct, gs, gt, h.local_top)
            local = local + local_affinity(ct, cs, gt, gs, h.local_top).transpose(1, 2)
            unary = h.alpha * global_affinity(zs, zt) + (1 - h.alpha) * local
            es, et = edges_from_adjacency(a_s), edges_from_adjacency(a_t)
            edges = edge_affinity(zs, zt, es, et)
        with timed("solver forward"):
            matching, _ = imle_matching(unary, edges, es, et, solver=graph_matching, lam=h.imle_lambda)
            loss = hamming(matching)
        with timed("backward"):
            loss.backward()
    finally:
        imle._solve = real_solve
    times["I-MLE second solve"] = solves[1] if len(solves) > 1 else 0.0
    times["backward"] -= times["I-MLE second solve"]
    return times


def random_batch(batch: int, size: int, device: torch.device) -> dict:
    pair = GeometricViewsd.pair(RandGeometricViewd(size, scale=(0.3, 1.0), flip_prob=0.5))
    samples = [pair({"image": torch.rand(3, size * 2, size * 2)}) for _ in range(batch)]
    return {
        key: [torch.stack([s[key][k] for s in samples]).to(device) for k in range(2)] for key in ("views", "geometry")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, device {device}; backbone {args.backbone}, views {args.size}², graphs of 16"
    )
    torch.manual_seed(0)
    model = lvm_med.LVMMed(backbone={"name": args.backbone, "in_channels": 3}).to(device)
    for batch_size in args.batches:
        batch = random_batch(batch_size, args.size, device)
        one_step(model, batch, device)  # warm-up
        runs = [one_step(model, batch, device) for _ in range(args.repeats)]
        parts = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        total = sum(parts.values())
        matching = parts["affinities"] + parts["solver forward"] + parts["I-MLE second solve"]
        print(
            f"\nbatch {batch_size} ({batch_size // 16} graphs): step {total * 1000:.0f} ms, "
            f"matching share {100 * matching / total:.1f} %"
        )
        for name, seconds in parts.items():
            print(f"  {name:<20}{seconds * 1000:>10.1f} ms{100 * seconds / total:>8.1f} %")


if __name__ == "__main__":
    main()
