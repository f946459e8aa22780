"""Step time and peak memory of MADELEINE (Jaume et al., ECCV 2024) at the paper's size, 65 cases × 5
stains × 2,048 tokens × 512-d patch features, and the share of the step that graph optimal transport
(GOT) takes.

Usage::

    python benchmarks/bench_madeleine.py                                 # the paper's batch, CPU
    python benchmarks/bench_madeleine.py --cases 8 16 65 --tokens 512 2048 --max-gb 20
    python benchmarks/bench_madeleine.py --device cuda --repeats 5 --precision bf16-mixed

The model is :class:`~medssl.methods.madeleine.Madeleine` with ``configs/pretrain/madeleine.yaml``'s
defaults (hidden 512, 4 heads, 512-d slide and 128-d local tokens, GOT on 256 tokens per slide sampled
along the token axis, averaged over cases) and its AdamW. Every case has all 5 stains (the most work a
batch can hold). A step is forward, backward and the optimiser step; ``no GOT`` is the same step with
``got_weight=0`` (GOT not computed at all), so ``GOT share = 1 − no GOT / step``.

Each setting (cases × tokens) runs in its own process, smallest first; memory is the process's peak
resident memory (CPU, ``ru_maxrss``, imports and inputs included) or ``torch.cuda.max_memory_allocated``
(CUDA). A setting projected over ``--max-gb`` from the ones measured before it (linear in cases × tokens
through the last two) is not run and says so; one that runs is stopped if it passes the limit anyway.
Timings are medians of ``--repeats`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import machine_line, method_optimizer, rss_mib, run_setting  # noqa: E402  (benchmarks/ is a folder of scripts)

STAINS = ["HE", "ER", "PR", "HER2", "KI67"]


def batch_of(cases: int, tokens: int, dim: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "tokens": torch.randn(cases, len(STAINS), tokens, dim, generator=generator).to(device),
        "present": torch.ones(cases, len(STAINS), dtype=torch.bool, device=device),
        "stains": list(STAINS),
    }


def step_seconds(got_weight: float, batch: dict, args: argparse.Namespace, device: torch.device) -> float:
    from medssl.methods.madeleine import Madeleine

    torch.manual_seed(0)
    model = Madeleine(in_dim=args.dim, stains=STAINS, got_weight=got_weight).to(device)
    optimizer = method_optimizer(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    times = []
    for _ in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            terms, _ = model.alignment_losses(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(setting: dict, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = batch_of(setting["cases"], setting["tokens"], args.dim, device)
    step = step_seconds(1.0, batch, args, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mib()
    without = step_seconds(0.0, batch, args, device)
    return {**setting, "step_s": step, "no_got_s": without, "got_share": 1 - without / step, "peak_mib": peak}


def projected_mib(setting: dict, measured: list[dict]) -> float | None:
    """Peak memory of ``setting`` on the line (in cases × tokens) through the last two measured settings."""
    points = [(m["cases"] * m["tokens"], m["peak_mib"]) for m in measured if "peak_mib" in m][-2:]
    if len(points) < 2 or points[0][0] == points[1][0]:
        return None
    (x0, y0), (x1, y1) = points
    return y0 + (y1 - y0) * (setting["cases"] * setting["tokens"] - x0) / (x1 - x0)


def table(rows: list[dict]) -> str:
    lines = [
        "| cases × stains × tokens × dim | step | no GOT | GOT share | peak memory |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['cases']} × {len(STAINS)} × {r['tokens']} × {r['dim']}"
        if "error" in r:
            lines.append(f"| {size} | {r['error']} | | | |")
            continue
        lines.append(
            f"| {size} | {r['step_s']:.2f} s | {r['no_got_s']:.2f} s | {100 * r['got_share']:.0f} % "
            f"| {r['peak_mib'] / 1024:.1f} GB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, nargs="+", default=[65])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-gb", type=float, default=20.0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child), args)))
        return []
    args.passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    grid = sorted(
        ({"cases": c, "tokens": t, "dim": args.dim} for c in args.cases for t in args.tokens),
        key=lambda s: s["cases"] * s["tokens"],
    )
    rows: list[dict] = []
    limit = args.max_gb * 1024
    for setting in grid:
        projection = projected_mib(setting, rows)
        if projection is not None and projection > limit:
            rows.append({**setting, "error": f"not run: projected {projection / 1024:.0f} GB > {args.max_gb:g} GB"})
        else:
            rows.append(run_setting(__file__, args.passed, setting, limit))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    threads = args.threads or torch.get_num_threads()
    print(machine_line(args.device, f"{threads} threads, load {os.getloadavg()[0]:.1f}, precision {args.precision}"))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
