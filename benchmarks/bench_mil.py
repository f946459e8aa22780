"""Whole-slide inference speed and peak memory of ABMIL and INS on tile embeddings, at 10,000 and
100,000 instances per bag.

Usage::

    python benchmarks/bench_mil.py            # D = 512, 3 repeats
    python benchmarks/bench_mil.py --quick    # 1 repeat, 10k only

The bag lives in a Zarr array on disk, as ``medssl embed`` writes it (float32 ``[N, D]``, chunks of
8192 rows). Two ways of scoring it, each in a fresh process so peak memory is the process's own:

``pieces``  read and score ``--piece-size`` rows at a time, as validation, test and ``medssl heatmap``
            do (:meth:`SlideClassifier.score_bag` / :class:`BagPieceDataset`): memory is one piece
``whole``   read the whole bag, then one forward pass (what a plain ABMIL/INS script does)

Printed: slides per second (including the read) and the peak resident memory above the process's
baseline after imports (``VmHWM`` − baseline, Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One measurement: model, bag size, mode; prints a JSON line."""
    import numpy as np
    import torch
    import zarr

    from medssl.methods.abmil import ABMIL
    from medssl.methods.ins import INS

    torch.set_num_threads(args.threads)
    array = zarr.open_array(args.store, mode="r")
    dim = array.shape[1]
    model = (ABMIL(in_dim=dim) if args.model == "abmil" else INS(in_dim=dim, queue_size=16)).eval()
    torch.manual_seed(0)
    baseline = current_rss_mib()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            if args.mode == "pieces":
                state = model.start_bag()
                for first in range(0, args.n, args.piece_size):
                    rows = np.asarray(array[first : min(first + args.piece_size, args.n)])
                    model.add_piece(state, torch.from_numpy(rows))
                model.finish_bag(state)
            else:
                bag = torch.from_numpy(np.asarray(array[: args.n]))
                if args.model == "abmil":
                    model(bag[None])
                else:
                    model.instance_probabilities(bag).mean()
        times.append(time.perf_counter() - start)
    best = min(times)
    print(
        json.dumps(
            {
                "model": args.model,
                "n": args.n,
                "mode": args.mode,
                "seconds": best,
                "slides_per_s": 1 / best,
                "peak_mib": peak_rss_mib() - baseline,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--piece-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import numpy as np
    import zarr

    sizes = [10_000] if args.quick else [10_000, 100_000]
    repeats = 1 if args.quick else args.repeats
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
        f"D = {args.dim}, piece {args.piece_size}, best of {repeats}"
    )
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "bag.zarr")
        bag = zarr.create_array(store, shape=(max(sizes), args.dim), chunks=(8192, args.dim), dtype="float32")
        rng = np.random.default_rng(0)
        for first in range(0, max(sizes), 8192):
            rows = min(8192, max(sizes) - first)
            bag[first : first + rows] = rng.standard_normal((rows, args.dim), dtype=np.float32)
        print(f"\n{'model':<7}{'instances':>10}{'mode':>8}{'slides/s':>10}{'peak MiB':>10}")
        for model in ("abmil", "ins"):
            for n in sizes:
                for mode in ("pieces", "whole"):
                    command = [
                        sys.executable,
                        __file__,
                        "--child",
                        "--store",
                        store,
                        "--model",
                        model,
                        "--mode",
                        mode,
                        "--n",
                        str(n),
                        "--repeats",
                        str(repeats),
                        "--piece-size",
                        str(args.piece_size),
                        "--threads",
                        str(args.threads),
                    ]
                    result = json.loads(
                        subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                    )
                    print(f"{model:<7}{n:>10,}{mode:>8}{result['slides_per_s']:>10.2f}{result['peak_mib']:>10.0f}")


if __name__ == "__main__":
    main()
