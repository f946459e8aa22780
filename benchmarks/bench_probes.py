"""Time of the offline probes (``medssl probe``) on 100,000 × 512 embeddings, 4 classes, on this machine.

Usage::

    python benchmarks/bench_probes.py               # 100,000 × 512, 3 repeats, all torch threads
    python benchmarks/bench_probes.py --quick       # 20,000 × 512, 1 repeat

The embeddings are random: each class is a Gaussian around its own centre (unit noise, centres 0.1·N(0, 1)
per dimension, so the probes have something to find but do not separate it perfectly). 80 % are the
training set, 20 % the test set, as a probe on a 100,000-embedding set would split them. Timed, each
the median of ``--repeats`` runs (wall clock, including standardisation and prediction):

``linear f32``   logistic regression, L-BFGS in float32 (what ``medssl probe`` runs), fit + test scores
``linear f64``   the same in float64, for comparison (weights and test accuracy printed next to it)
``l2 grid``      the validation choice of l2 over the 5-value grid (5 fits; run only with a test split)
``knn``          weighted kNN (k = 20, cosine) of the 20,000 test embeddings against the 80,000
``few-shot``     one fold at k = 25 per class, linear and kNN, scored on the 20,000

The machine's load average is printed too: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20,000 embeddings, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 20_000, 1

    from medssl.eval.linear_probe import fit_linear_probe, linear_probe_logits
    from medssl.eval.probes import L2_GRID, classification_metrics, few_shot, knn_probe, linear_probe, select_l2

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(args.classes, args.dim, generator=generator) * 0.1
    y = torch.randint(0, args.classes, (args.n,), generator=generator)
    x = torch.randn(args.n, args.dim, generator=generator) + centres[y]
    cut = int(0.8 * args.n)
    tx, ty, qx, qy = x[:cut], y[:cut], x[cut:], y[cut:]
    c = args.classes
    linear_probe(tx[:100], ty[:100], qx[:10], c)  # first use of torch.optim imports its machinery: not timed

    print(
        f"{args.n:,} × {args.dim} float32 embeddings, {c} classes ({cut:,} train / {args.n - cut:,} test); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; load average before {os.getloadavg()[0]:.2f}; "
        f"median of {args.repeats}"
    )
    rows = []
    seconds, scores = timed(lambda: linear_probe(tx, ty, qx, c), args.repeats)
    rows.append(("linear f32", seconds, classification_metrics(scores, qy, c)["balanced_accuracy"], ""))

    def f64():
        probe = fit_linear_probe(tx, ty, c, dtype=torch.float64)
        return probe, linear_probe_logits(qx, *probe).softmax(1)

    seconds, (probe64, scores64) = timed(f64, args.repeats)
    probe32 = fit_linear_probe(tx, ty, c, dtype=torch.float32)
    gap = float((probe32[0].double() - probe64[0]).abs().max())
    rows.append(
        (
            "linear f64",
            seconds,
            classification_metrics(scores64, qy, c)["balanced_accuracy"],
            f"max |W32 − W64| {gap:.1e}",
        )
    )
    half = len(qx) // 2
    seconds, (best, _) = timed(lambda: select_l2(tx, ty, qx[:half], qy[:half], c, L2_GRID), 1)
    rows.append(("l2 grid", seconds, None, f"5 fits, chose {best:g} (1 run)"))
    seconds, scores = timed(lambda: knn_probe(tx, ty, qx, c), args.repeats)
    rows.append(("knn", seconds, classification_metrics(scores, qy, c)["balanced_accuracy"], ""))

    def one_fold():
        return {probe: few_shot(tx, ty, qx, qy, (25,), 1, probe, num_classes=c) for probe in ("linear", "knn")}

    seconds, shots = timed(one_fold, args.repeats)
    accuracy = {probe: result[25]["mean"]["balanced_accuracy"] for probe, result in shots.items()}
    rows.append(
        (
            "few-shot",
            seconds,
            None,
            f"k=25, 1 fold, linear + knn; bal. acc {accuracy['linear']:.3f} / {accuracy['knn']:.3f}",
        )
    )

    print(f"{'':<12}{'seconds':>9}  {'bal. acc':>8}  note")
    for name, seconds, accuracy, note in rows:
        cell = "" if accuracy is None else f"{accuracy:.3f}"
        print(f"{name:<12}{seconds:>9.2f}  {cell:>8}  {note}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
