"""Quality and seconds of the LVM-Med matching solvers against graph size, in the setting LVM-Med trains in.

Usage::

    python benchmarks/bench_matching.py            # 8, 16, 32, 64 nodes, batch of 16 graphs, 3 repeats
    python benchmarks/bench_matching.py --quick    # 1 repeat, 16 reference starts

Each batch of 16 problems is built as LVM-Med sees them early in training: random 128-d unit vectors for
the two views' nodes (unrelated, so cosines near 0), kNN graphs with k = 5 out-edges per node, unary
affinity = cosine of the nodes, edge affinity = cosine of the edge difference vectors (``[n·5, n·5]``),
and Gumbel(0, 1) noise on both (``noise_scale`` 1). The solvers see the perturbed affinities.

``linear``         :func:`linear_matching` (Hungarian per graph, the "w/o second-order" ablation)
``restarts=R``     :func:`graph_matching` with ``R`` restarts (IPFP from the linear assignment, the
                   barycentre and ``R`` perturbed linear assignments, each polished by pairwise exchange);
                   ``restarts=0`` is the solver before issue 15, ``restarts=8`` the default

``gap`` is ``(best − found) / |best|`` per problem, where ``best`` is the best matching known: the best of
``--reference-starts`` pairwise-exchange searches from random permutations and of every solver in the
table. ``best %`` is the share of problems where the solver found it. ``forward`` is one solve of the
batch; ``imle_step`` one I-MLE step (forward, Hamming loss, backward with its second solve). Times are
medians over repeats, on the CPU, with the torch threads printed in the header.

A second table is the noise temperature (``LVMMed(noise_scale=...)``, ``imle_matching``'s
``noise_temperature``) against the share of nodes matched to themselves, on planted problems whose noise-free
optimum is the identity: target nodes are noisy copies of the source nodes (``target = source + σ·ε``, with
``σ`` chosen so the true pairs' cosine is about 0.6 and the others' about 0), the affinities in [-1, 1] that
LVM-Med's cosines give. It shows why ``train/matched`` stays low at temperature 1.
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
from medssl.matching import graph_matching, gumbel_noise, imle_matching, knn_edges, linear_matching, matching_objective
from medssl.matching.solvers import EdgePairs, PermutationObjective, swap_local_search

BATCH, K, DIM = 16, 5, 128


def problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    source = F.normalize(torch.randn(BATCH, n, DIM, generator=generator), dim=-1)
    target = F.normalize(torch.randn(BATCH, n, DIM, generator=generator), dim=-1)
    es, et = knn_edges(source, K), knn_edges(target, K)
    rows = torch.arange(BATCH).unsqueeze(1)

    def edge_vectors(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return F.normalize(x[rows, edges[..., 0]] - x[rows, edges[..., 1]], dim=-1)

    unary = source @ target.transpose(1, 2)
    edge_affinity = edge_vectors(source, es) @ edge_vectors(target, et).transpose(1, 2)
    unary = unary + gumbel_noise(unary.shape, generator)
    edge_affinity = edge_affinity + gumbel_noise(edge_affinity.shape, generator)
    return unary, edge_affinity, es, et


def planted_problem(n: int, seed: int, spread: float = 1.2):
    """Node embeddings of two views of the same ``n`` images (noise-free optimum: the identity)."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.randn(BATCH, n, DIM, generator=generator)
    target = source + spread * torch.randn(BATCH, n, DIM, generator=generator)
    es, et = knn_edges(source, K), knn_edges(target, K)
    rows = torch.arange(BATCH).unsqueeze(1)

    def edge_vectors(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return F.normalize(x[rows, edges[..., 0]] - x[rows, edges[..., 1]], dim=-1)

    unary = F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2)
    edge_affinity = edge_vectors(source, es) @ edge_vectors(target, et).transpose(1, 2)
    return unary, edge_affinity, es, et


def matched_by_temperature(n: int, temperatures: list[float], draws: int = 4) -> list[dict]:
    """Share of nodes the perturbed solve matches to themselves, per noise temperature."""
    unary, edge_affinity, es, et = planted_problem(n, seed=100 + n)
    rows = []
    for temperature in temperatures:
        shares = []
        for draw in range(draws):
            v, _ = imle_matching(
                unary, edge_affinity, es, et, noise=temperature > 0, noise_temperature=temperature, generator=2 * draw
            )
            shares.append(float(v.diagonal(dim1=1, dim2=2).mean()))
        rows.append({"nodes": n, "temperature": temperature, "matched": statistics.mean(shares)})
    return rows


def random_start_best(unary, edge_affinity, es, et, starts: int, seed: int = 0) -> torch.Tensor:
    """Best objective of ``starts`` pairwise-exchange searches from random permutations, per problem."""
    n = unary.shape[1]
    generator = torch.Generator().manual_seed(seed)
    objective = PermutationObjective(
        unary, edge_affinity, EdgePairs(es, et, BATCH, n, unary.dtype, unary.device), torch.arange(BATCH).repeat(starts)
    )
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(BATCH * starts)])
    perms = swap_local_search(perms, objective, max_swaps=10 * n * n)
    return objective.score(perms).view(starts, BATCH).amax(dim=0)


def solve_and_backward(unary, edge_affinity, es, et, solver) -> None:
    """One I-MLE step: forward (no extra noise: the affinities are already perturbed), Hamming loss,
    backward (a second solve)."""
    theta_v, theta_e = unary.clone().requires_grad_(), edge_affinity.clone().requires_grad_()
    v, _ = imle_matching(theta_v, theta_e, es, et, solver=solver, noise=False)
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--restarts", type=int, nargs="+", default=[0, 4, 8, 16])
    parser.add_argument("--reference-starts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    reference_starts = 16 if args.quick else args.reference_starts
    solvers = {"linear": linear_matching} | {
        f"restarts={r}": partial(graph_matching, restarts=r) for r in args.restarts
    }
    rows = []
    for n in args.sizes:
        unary, edge_affinity, es, et = problem(n, seed=n)
        start = time.perf_counter()
        best = random_start_best(unary, edge_affinity, es, et, reference_starts)
        reference_seconds = time.perf_counter() - start
        found = {}
        for name, solver in solvers.items():
            v = solver(unary, edge_affinity, es, et)
            found[name] = matching_objective(v, unary, edge_affinity, es, et)
            forward_s = timed(partial(solver, unary, edge_affinity, es, et), repeats)
            step_s = timed(partial(solve_and_backward, unary, edge_affinity, es, et, solver), repeats)
            rows.append({"nodes": n, "solver": name, "forward_ms": 1000 * forward_s, "imle_step_ms": 1000 * step_s})
        random_start_share = float((best >= torch.stack(list(found.values())).amax(0) - 1e-5).float().mean())
        best = torch.maximum(best, torch.stack(list(found.values())).amax(0))
        for row in rows[-len(solvers) :]:
            gap = (best - found[row["solver"]]) / best.abs()
            row |= {
                "gap_mean_pct": 100 * float(gap.mean()),
                "gap_max_pct": 100 * float(gap.max()),
                "best_pct": 100 * float((gap <= 1e-6).float().mean()),
                "reference_seconds": reference_seconds,
                "reference_is_best_pct": 100 * random_start_share,
            }
    torch_threads = torch.get_num_threads()
    print(
        f"batch of {BATCH} graph pairs, kNN k={K}, Gumbel(0, 1) on both affinities; best known = best of "
        f"{reference_starts} random-start searches and all solvers; torch threads {torch_threads}"
    )
    print(f"{'nodes':>5} {'solver':>12} {'gap mean %':>10} {'gap max %':>9} {'best %':>6} ", end="")
    print(f"{'fwd ms':>9} {'fwd+bwd ms':>10}")
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['solver']:>12} {r['gap_mean_pct']:>10.2f} {r['gap_max_pct']:>9.2f} "
            f"{r['best_pct']:>6.0f} {r['forward_ms']:>9.1f} {r['imle_step_ms']:>10.1f}"
        )
    for n in args.sizes:
        first = next(r for r in rows if r["nodes"] == n)
        print(
            f"n = {n}: the random-start reference ({first['reference_seconds']:.1f} s) reached the best known "
            f"on {first['reference_is_best_pct']:.0f} % of problems"
        )
    temperature_rows = matched_by_temperature(16, args.temperatures)
    unary = planted_problem(16, seed=116)[0]
    true_pairs = float(unary.diagonal(dim1=1, dim2=2).mean())
    others = float((unary.sum(dim=(1, 2)) - unary.diagonal(dim1=1, dim2=2).sum(-1)).mean() / (16 * 15))
    print(f"\nplanted problems, 16 nodes (true pairs' cosine {true_pairs:.2f}, others {others:.2f}), default solver:")
    print("temperature  matched to self")
    for r in temperature_rows:
        print(f"{r['temperature']:>11} {r['matched']:>16.2f}")
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
        "reference_starts": reference_starts,
        "results": rows,
        "matched_by_temperature": temperature_rows,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
