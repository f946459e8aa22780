"""How much does pretraining buy at 1 % / 10 % / 100 % of the labels?

For each task, on held-out test cases:

- ``tiles``: tile classification (lesion / normal, tile labels from the lesion masks) on a tile cache of
  real-pixel slides (IHC tissue with retina-texture lesions, ``write_lesion_cohort``); encoder: SimCLR
  pretrained on the training slides' tiles (``configs/pretrain/simclr_tiles.yaml`` at demo scale), fine-tuned
  by ``configs/finetune/classification/tiles.yaml``; metric: test AUROC over tiles.
- ``slices``: 2D segmentation of grey and white matter on axial slices of a volume cache of brain MRIs
  (nilearn's real MNI152 T1 and tissue maps under random deformations, ``brain_cohort``); encoder: SimCLR
  pretrained on the training cases' slices (``configs/pretrain/simclr_slices.yaml``), fine-tuned by
  ``configs/finetune/segmentation_2d/unet_slices.yaml``; metric: mean 3D Dice over the test cases.

Each (fraction, seed) is run from the pretrained encoder and from a random initialisation of the same
architecture (``random_init``), with the same training budget in optimiser steps (``--steps``; fewer labels
means more epochs over them, not fewer updates), the same seeded subset of training *cases* (nested across
fractions) and the final weights tested. Writes, per task, ``<out>/<task>/results.csv`` (one row per run
and metric), ``summary.csv`` (mean ± std over seeds) and ``<task>.png``; finished runs are skipped on a
re-run (whatever ``--steps`` it is given: use a new ``--out`` for another budget).

    python pipelines/label_efficiency.py --out runs/label-efficiency --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from medssl.eval.results import write_csv_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TASKS = {
    "tiles": {
        "pretrain": CONFIGS / "pretrain" / "simclr_tiles.yaml",
        "finetune": CONFIGS / "finetune" / "classification" / "tiles.yaml",
        "metrics": ["test/auroc", "test/balanced_accuracy", "test/f1"],
        "title": "tile classification (lesion vs normal)",
    },
    "slices": {
        "pretrain": CONFIGS / "pretrain" / "simclr_slices.yaml",
        "finetune": CONFIGS / "finetune" / "segmentation_2d" / "unet_slices.yaml",
        "metrics": ["test/dice", "test/dice_grey_matter", "test/dice_white_matter", "test/hd95"],
        "title": "slice segmentation (grey / white matter)",
    },
}
SMALL_RESNET = {"name": "resnet18", "spatial_dims": 2, "width": 0.5}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


# -- data --------------------------------------------------------------------------------------------
def tile_data(root: Path, n_slides: int) -> dict:
    """A tile cache of a lesion cohort at 1 µm/px, 32-px tiles, and tile labels from its masks. Small
    slides (2048 px at 0.25 µm/px, about 75 tiles each) and many of them: label fractions count cases,
    and 10 % of the training slides is more than one per class only from 20 per class up."""
    from medssl.data.truth import write_tile_labels
    from medssl.preprocess import TilingParams, tile_slides
    from medssl.synthetic.slides import write_lesion_cohort

    manifest = write_lesion_cohort(root / "slides", n_slides=n_slides, size=2048, seed=0)
    summary = tile_slides([manifest], root / "cache", TilingParams(target_mpp=1.0, tile_size=32), progress=False)
    if summary.failed:
        raise RuntimeError(f"tiling failed: {[r.reason for r in summary.failed]}")
    masks = root / "slides" / "masks"
    labels = write_tile_labels(root / "cache", masks, root / "tile_labels.csv", negative_slide_label="negative")
    return {"cache": root / "cache", "labels_csv": labels}


def slice_data(root: Path, n_cases: int) -> dict:
    """A volume cache of ``n_cases`` brain MRIs at 3 mm with grey/white-matter labels."""
    from medssl.preprocess import VolumeParams, cache_volumes
    from medssl.synthetic.volumes import brain_cohort

    manifest = brain_cohort(root / "volumes", n=n_cases, spacing=3.0, seed=0)
    summary = cache_volumes([manifest], root / "cache", VolumeParams(spacing=(3.0, 3.0, 3.0)), progress=False)
    if summary.failed:
        raise RuntimeError(f"caching failed: {[r.reason for r in summary.failed]}")
    return {"cache": root / "cache"}


# -- runs ----------------------------------------------------------------------------------------------
def lightning(argv: list[str]):
    from medssl.cli import run_lightning

    return run_lightning(argv)


def pretrain(task: str, data: dict, out: Path, epochs: int) -> Path:
    """SimCLR on the training cases' images (no labels), demo scale; the last checkpoint."""
    done = out / "pretrain.done"
    if done.exists():
        return Path(done.read_text().strip())
    backbone = {**SMALL_RESNET, "in_channels": 3 if task == "tiles" else 1}
    size = ["--data.init_args.view_size", "32"] if task == "tiles" else ["--data.init_args.spatial_size", "[64, 64]"]
    cli = lightning(
        [
            "fit",
            "--config",
            str(TASKS[task]["pretrain"]),
            "--data.init_args.cache",
            str(data["cache"]),
            "--data.init_args.batch_size",
            "64",
            "--data.init_args.num_workers",
            "0",
            *size,
            "--data.init_args.val_split",
            "null",
            "--data.init_args.test_split",
            "null",
            "--model.init_args.backbone",
            json.dumps(backbone),
            "--model.init_args.proj_hidden_dim",
            "512",
            "--model.init_args.warmup_epochs",
            "1",
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            *QUIET,
        ]
    )
    checkpoint = Path(
        cli.trainer.checkpoint_callback.last_model_path or cli.trainer.checkpoint_callback.best_model_path
    )
    done.write_text(str(checkpoint))
    return checkpoint


def finetune(
    task: str, data: dict, encoder: Path, init: str, fraction: float, seed: int, steps: int, batch: int, out: Path
) -> dict[str, float]:
    """One run of the label-efficiency grid: the task's test metrics of its final weights."""
    extra = ["--data.init_args.labels_csv", str(data["labels_csv"])] if task == "tiles" else []
    extra += ["--data.init_args.spatial_size", "[64, 64]"] if task == "slices" else []
    config = TASKS[task]
    metrics = fit_and_test(config["finetune"], data["cache"], encoder, init, steps, out, seed, fraction, extra, batch)
    return {name: metrics[name] for name in config["metrics"]}


def fit_and_test(
    config: Path,
    cache: Path,
    encoder: Path,
    init: str,
    steps: int,
    out: Path,
    seed: int = 0,
    fraction: float = 1.0,
    extra: Sequence[str] = (),
    batch_size: int = 32,
    checkpoint: Path | None = None,
) -> dict[str, float]:
    """``medssl fit`` of a fine-tuning config for ``steps`` optimiser steps from ``encoder`` (``init``:
    ``pretrained``, or ``random``: its architecture re-initialised), then the test split's metrics of
    the final weights, which are also saved to ``checkpoint`` when given (for ``medssl segment`` or
    ``medssl heatmap``). Cached in ``out/result.json``: a re-run returns them without training."""
    result = out / "result.json"
    if result.exists() and (checkpoint is None or checkpoint.exists()):
        return json.loads(result.read_text())["metrics"]
    cli = lightning(
        [
            "fit",
            "--config",
            str(config),
            "--seed_everything",
            str(seed),
            "--data.init_args.cache",
            str(cache),
            "--data.init_args.label_fraction",
            str(fraction),
            "--data.init_args.fraction_seed",
            str(seed),
            "--data.init_args.batch_size",
            str(batch_size),
            "--data.init_args.num_workers",
            "0",
            "--model.init_args.encoder",
            str(encoder),
            "--model.init_args.backbone",
            "null",
            "--model.init_args.random_init",
            str(init == "random").lower(),
            "--model.init_args.warmup_epochs",
            "0",
            "--trainer.max_steps",
            str(steps),
            "--trainer.max_epochs",
            "-1",
            "--trainer.check_val_every_n_epoch",
            "1000000",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            *QUIET,
            *extra,
        ]
    )
    if checkpoint is not None:
        cli.trainer.save_checkpoint(checkpoint)
    metrics = {k: float(v) for k, v in cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0].items()}
    out.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"metrics": metrics}))
    return metrics


def run_grid(
    task: str,
    data: dict,
    encoder: Path,
    root: Path,
    fractions: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    batch: int,
    verbose: bool = True,
) -> list[dict]:
    """Every (fraction, seed, init) run of one task, each in ``root/fraction-<f>/seed-<s>/<init>``; one row
    per run and metric: ``{task, metric, init, fraction, seed, value}`` (what :func:`summarise` takes)."""
    rows = []
    for fraction in fractions:
        for seed in seeds:
            for init in ("pretrained", "random"):
                run = root / f"fraction-{fraction:g}" / f"seed-{seed}" / init
                metrics = finetune(task, data, encoder, init, fraction, seed, steps, batch, run)
                rows += [
                    {"task": task, "metric": m, "init": init, "fraction": fraction, "seed": seed, "value": v}
                    for m, v in metrics.items()
                ]
                if verbose:
                    shown = ", ".join(f"{m} {v:.3f}" for m, v in metrics.items())
                    print(f"[{task}] {init:<10} fraction {fraction:<5g} seed {seed}: {shown}", flush=True)
    return rows


# -- tables and plots -----------------------------------------------------------------------------------
def write_tables(folder: Path, rows: list[dict]) -> list[dict]:
    """``folder/results.csv`` (the rows: one per run and metric) and ``folder/summary.csv`` (their
    :func:`summarise`), atomically; returns the summary."""
    summary = summarise(rows)
    write_csv_atomic(folder / "results.csv", list(rows[0]), [list(r.values()) for r in rows])
    write_csv_atomic(folder / "summary.csv", list(summary[0]), [list(r.values()) for r in summary])
    return summary


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± sample std over seeds for each (task, metric, init, fraction)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["metric"], row["init"], row["fraction"]), []).append(row["value"])
    return [
        {
            "task": task,
            "metric": metric,
            "init": init,
            "fraction": fraction,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": len(values),
        }
        for (task, metric, init, fraction), values in sorted(groups.items())
    ]


def cell(summary: list[dict], task: str, metric: str, init: str, fraction: float) -> dict:
    return next(
        r for r in summary if (r["task"], r["metric"], r["init"], r["fraction"]) == (task, metric, init, fraction)
    )


def plot(out: Path, task: str, summary: list[dict], fractions: list[float]) -> None:
    """The task's first metric against the label fraction, pretrained and random, ± std over seeds."""
    from medssl.viz.charts import save_line_chart

    metric = TASKS[task]["metrics"][0]
    series = {
        init: [
            (cell(summary, task, metric, init, f)["mean"], cell(summary, task, metric, init, f)["std"])
            for f in fractions
        ]
        for init in ("pretrained", "random")
    }
    labels = [f"{f:.0%}" for f in fractions]
    save_line_chart(out / f"{task}.png", series, labels, TASKS[task]["title"], metric)


def print_table(summary: list[dict], tasks: list[str], fractions: list[float]) -> None:
    """A Markdown table: one row per task, metric and initialisation; mean ± std per fraction."""
    print("\n| task | metric | init | " + " | ".join(f"{f:.0%} of training cases" for f in fractions) + " |")
    print("|---|---|---|" + "---|" * len(fractions))
    for task in tasks:
        for metric in TASKS[task]["metrics"]:
            for init in ("pretrained", "random"):
                cells = [cell(summary, task, metric, init, f) for f in fractions]
                values = " | ".join(f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells)
                print(f"| {task} | {metric} | {init} | {values} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/label-efficiency"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per fine-tuning run")
    parser.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--slides", type=int, default=80, help="slides in the tile task's cohort (half train)")
    parser.add_argument("--cases", type=int, default=30, help="brain MRIs in the slice task's cohort")
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks:
        root = args.out / task
        data = tile_data(root / "data", args.slides) if task == "tiles" else slice_data(root / "data", args.cases)
        print(f"[{task}] pretraining SimCLR ({args.pretrain_epochs} epochs)", flush=True)
        encoder = pretrain(task, data, root / "pretrain", args.pretrain_epochs)
        rows += run_grid(task, data, encoder, root, args.fractions, args.seeds, args.steps, args.batch_size)
    summary = summarise(rows)
    for task in args.tasks:  # per task: a task's runs may use their own --steps and --batch-size
        write_tables(args.out / task, [r for r in rows if r["task"] == task])
        plot(args.out / task, task, summary, args.fractions)
    print_table(summary, args.tasks, args.fractions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
