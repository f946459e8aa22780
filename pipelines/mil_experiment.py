"""Slide-level learning on a generated cohort of slides from real pixels: does INS find the lesions
from slide labels alone, and how does it compare with ABMIL?

The cohort (``medssl.synthetic.slides.write_lesion_cohort``): IHC tissue texture (scikit-image) in
every slide; in half of them a few round lesions of retina texture, a few per cent of the tiles; lesion
masks for instance truth. Steps: tile (1 µm/px, 32-px tiles) → embed with a ResNet-18 (random init
unless ``--checkpoint``) → ABMIL and INS through ``medssl fit`` with ``configs/mil/*.yaml`` → test on
held-out slides: bag AUROC, balanced accuracy, instance AUROC (INS: instance probabilities; ABMIL:
attention), heatmaps.

    python pipelines/mil_experiment.py --out mil-experiment --slides 32 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mil"
METRICS = ("bag_auroc", "balanced_accuracy", "instance_auroc")


def prepare_cohort(
    out: Path, n_slides: int, seed: int = 0, checkpoint: str | None = None, lesion_radius: float = 300.0
) -> dict:
    """Write, tile and embed the cohort; returns the paths and the embedding width."""
    import torch

    from medssl.cli import main as medssl_main
    from medssl.export.embeddings import embed_cache
    from medssl.export.encoders import load_encoder
    from medssl.nn.backbones import build_encoder
    from medssl.synthetic.slides import write_lesion_cohort

    cohort = write_lesion_cohort(out / "slides", n_slides=n_slides, seed=seed, lesion_radius=lesion_radius)
    status = medssl_main(
        ["tile", str(cohort), "--out", str(out / "cache"), "--mpp", "1.0", "--tile-size", "32", "--min-tissue", "0.5"]
    )
    if status:
        raise SystemExit(f"tiling failed (status {status})")
    torch.manual_seed(seed)
    encoder = (
        build_encoder(name="resnet18", in_channels=3, width=0.5) if checkpoint is None else load_encoder(checkpoint)
    )
    embed_cache(encoder, out / "cache", out / "embeddings", batch_size=512, progress=False)
    return {
        "cache": out / "cache",
        "features": out / "embeddings",
        "masks": out / "slides" / "masks",
        "in_dim": encoder.out_dim,
    }


def fit_and_test(model: str, cohort: dict, out: Path, epochs: int, extra: list[str] | None = None) -> dict:
    """``medssl fit`` with ``configs/mil/<model>.yaml`` on the cohort, then test the final weights on the
    test split. Returns the test metrics and where the results and heatmaps are."""
    from medssl.cli import run_lightning

    cli = run_lightning(
        [
            "fit",
            "--config",
            str(CONFIGS / f"{model}.yaml"),
            "--data.init_args.cache",
            str(cohort["cache"]),
            "--data.init_args.features",
            str(cohort["features"]),
            "--data.init_args.instance_masks",
            str(cohort["masks"]),
            "--data.init_args.num_workers",
            "0",
            "--model.init_args.in_dim",
            str(cohort["in_dim"]),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.default_root_dir",
            str(out / "runs" / model),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.check_val_every_n_epoch",
            str(max(1, epochs // 5)),
            *(extra or []),
        ]
    )
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    results = Path(cli.trainer.log_dir) / "results" / "test"
    return {**{name: metrics.get(f"test/{name}") for name in METRICS}, "results": str(results)}


def print_table(rows: dict[str, dict]) -> None:
    print(f"\n{'test slides':<10}{'bag AUROC':>12}{'balanced acc':>14}{'instance AUROC':>16}")
    for name, metrics in rows.items():
        cells = ["" if metrics.get(m) is None else f"{metrics[m]:.3f}" for m in METRICS]
        print(f"{name:<10}{cells[0]:>12}{cells[1]:>14}{cells[2]:>16}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("mil-experiment"))
    parser.add_argument("--slides", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="embed with this encoder instead of a random-init ResNet-18")
    parser.add_argument("--lesion-radius", type=float, default=300.0, help="level-0 pixels (0.25 µm/px)")
    args = parser.parse_args(argv)
    cohort = prepare_cohort(args.out, args.slides, args.seed, args.checkpoint, args.lesion_radius)
    seed = ["--seed_everything", str(args.seed)]
    rows = {
        "ABMIL": fit_and_test("abmil", cohort, args.out, args.epochs, seed + ["--model.init_args.lr", "5e-4"]),
        "INS": fit_and_test(
            "ins",
            cohort,
            args.out,
            args.epochs,
            seed + ["--model.init_args.prototype_start", str(max(1, args.epochs // 5))],
        ),
    }
    print_table(rows)
    for name, metrics in rows.items():
        print(f"{name}: slide predictions, metrics and heatmaps in {metrics['results']}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
