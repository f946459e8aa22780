"""Seconds per batch of graph pairs for the LVM-Med matching solvers, against graph size.

Usage::

    python benchmarks/bench_matching.py            # 8, 16, 32, 64 nodes, batch of 16 graphs, 5 repeats
    python benchmarks/bench_matching.py --quick    # 1 repeat

Each problem is built as LVM-Med builds it: random 128-d node embeddings for two views (the second a
noisy copy of the first), kNN graphs with k = 5 out-edges per node, unary affinity = cosine of the
nodes, edge affinity = cosine of the edge difference vectors (``[n·5, n·5]`` per graph).

``linear``        :func:`linear_matching` (Hungarian per graph, the "w/o second-order" ablation)
``second_order``  :func:`graph_matching` (IPFP from two starts + pairwise-exchange local search)

``forward`` is one I-MLE forward (Gumbel noise + one solve); ``imle_step`` adds the backward of the
Hamming loss (the second solve at θ' = θ − λ∂L/∂v); times are medians over repeats, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from medssl.losses import hamming
from medssl.matching import graph_matching, imle_matching, knn_edges, linear_matching

BATCH, K, DIM = 16, 5, 128


def problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    source = torch.randn(BATCH, n, DIM, generator=generator)
    target = source + 0.8 * torch.randn(BATCH, n, DIM, generator=generator)
    es, et = knn_edges(source, K), knn_edges(target, K)

    def edge_vectors(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(BATCH).unsqueeze(1)
        return F.normalize(x[rows, edges[..., 0]] - x[rows, edges[..., 1]], dim=-1)

    unary = F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2)
    edge_affinity = edge_vectors(source, es) @ edge_vectors(target, et).transpose(1, 2)
    return unary, edge_affinity, es, et


def solve(unary, edge_affinity, es, et, solver) -> torch.Tensor:
    """The perturbed matching (I-MLE's forward pass)."""
    return imle_matching(unary, edge_affinity, es, et, solver=solver, generator=0)[0]


def solve_and_backward(unary, edge_affinity, es, et, solver) -> None:
    """One I-MLE step: forward, Hamming loss, backward (a second solve)."""
    theta_v, theta_e = unary.clone().requires_grad_(), edge_affinity.clone().requires_grad_()
    v, _ = imle_matching(theta_v, theta_e, es, et, solver=solver, generator=0)
    hamming(v).backward()


def timed(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    solvers = {"linear": linear_matching, "second_order": graph_matching}
    rows = []
    for n in args.sizes:
        unary, edge_affinity, es, et = problem(n, seed=n)
        for name, solver in solvers.items():
            forward = partial(solve, unary, edge_affinity, es, et, solver)
            imle_step = partial(solve_and_backward, unary, edge_affinity, es, et, solver)
            accuracy = (forward().diagonal(dim1=1, dim2=2).sum(-1) / n).mean().item()
            rows.append(
                {
                    "nodes": n,
                    "edges_per_graph": n * K,
                    "solver": name,
                    "forward_ms": round(1000 * timed(forward, repeats), 2),
                    "imle_step_ms": round(1000 * timed(imle_step, repeats), 2),
                    "identity_recovered": round(accuracy, 3),
                }
            )
    torch_threads = torch.get_num_threads()
    header = f"{'nodes':>5} {'edges':>6} {'solver':>13} {'forward ms':>11} {'fwd+bwd ms':>11} {'id. recovered':>14}"
    print(f"batch of {BATCH} graph pairs, kNN k={K}, Gumbel noise on, λ = 80; torch threads {torch_threads}")
    print(header)
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['edges_per_graph']:>6} {r['solver']:>13} {r['forward_ms']:>11} "
            f"{r['imle_step_ms']:>11} {r['identity_recovered']:>14}"
        )
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch_threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "batch": BATCH,
        "k": K,
        "repeats": repeats,
        "results": rows,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
