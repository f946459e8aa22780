"""Slide-level learning on a generated cohort of slides from real pixels: does INS find the lesions
from slide labels alone, and how does it compare with ABMIL?

The cohort (``medssl.synthetic.slides.write_lesion_cohort``): IHC tissue texture (scikit-image) in
every slide; in half of them a few round lesions of retina texture, a few per cent of the tiles; lesion
masks for instance truth. Steps: tile (1 µm/px, 32-px tiles) → embed with a ResNet-18 (random init
unless ``--checkpoint``) → ABMIL and INS through ``medssl fit`` with ``configs/mil/*.yaml`` → test on
held-out slides: bag AUROC, balanced accuracy at 0.5, heatmaps, and lesion localisation scored two
ways for both models (INS: instance probabilities; ABMIL: attention logits): one AUROC over every
test instance pooled, and the mean AUROC within each positive test slide. For INS it also reports how
many training instances of positive slides end with a positive soft label, beside the true lesion
share (lesion masks are read for this report only, after training).

    python pipelines/mil_experiment.py --out mil-experiment --slides 32 --epochs 30 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mil"
METRICS = ("bag_auroc", "balanced_accuracy", "instance_auroc", "instance_auroc_per_slide")
HEADERS = ("bag AUROC", "balanced acc", "instance AUROC (pooled)", "instance AUROC (per slide)")


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
        "positive_class": "positive",  # write_lesion_cohort's labels: positive / negative
    }


def fit_arguments(model: str, cohort: dict, root: Path) -> list[str]:
    """``medssl fit --config configs/mil/<model>.yaml`` on a cohort's embeddings (``cache``,
    ``features``, ``positive_class``, ``in_dim``), no loader workers or progress bar, runs under ``root``."""
    return [
        "fit",
        "--config",
        str(CONFIGS / f"{model}.yaml"),
        "--data.init_args.cache",
        str(cohort["cache"]),
        "--data.init_args.features",
        str(cohort["features"]),
        "--data.init_args.positive_class",
        cohort["positive_class"],
        "--data.init_args.num_workers",
        "0",
        "--model.init_args.in_dim",
        str(cohort["in_dim"]),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
    ]


def fit_and_test(model: str, cohort: dict, out: Path, epochs: int, extra: list[str] | None = None) -> dict:
    """``medssl fit`` with ``configs/mil/<model>.yaml`` on the cohort, then test the final weights on the
    test split. Returns the test metrics and where the results and heatmaps are."""
    from medssl.cli import run_lightning

    cli = run_lightning(
        [
            *fit_arguments(model, cohort, out / "runs" / model),
            "--data.init_args.instance_masks",
            str(cohort["masks"]),
            "--trainer.max_epochs",
            str(epochs),
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
    row = {**{name: metrics.get(f"test/{name}") for name in METRICS}, "results": str(results)}
    if hasattr(cli.model, "soft_labels"):
        row.update(soft_label_shares(cli.model.soft_labels, cohort))
    return row


def soft_label_shares(soft_labels, cohort: dict) -> dict:
    """Among training instances of positive slides: the share whose soft label ends positive, and the
    share that are lesion by the masks (the target it should approach)."""
    import numpy as np

    from medssl.data.bags import InstanceDataset
    from medssl.data.truth import LesionMasks

    data = InstanceDataset(cohort["cache"], splits=["train"])
    positive_slide = data.tiles.slide_labels == data.tiles.classes.index(cohort["positive_class"])
    masks, cache = LesionMasks(cohort["masks"]), data.tiles.cache
    truth = np.concatenate(
        [
            masks.instance_truth(cache.metadata(slide_id), cache.coords(slide_id), int(is_positive))
            for slide_id, is_positive in zip(data.tiles.slide_ids, positive_slide)
        ]
    )
    positive = positive_slide[data.slide_of]
    soft = soft_labels.detach().cpu().numpy()[: len(truth)]
    return {
        "positive_soft_label_share": float((soft[positive, 1] > 0.5).mean()),
        "lesion_share": float(truth[positive].mean()),
        "lesion_recall": float((soft[positive & (truth == 1), 1] > 0.5).mean()),
    }


def print_table(rows: dict[str, dict]) -> None:
    print(f"\n{'test slides':<16}" + "".join(f"{h:>28}" for h in HEADERS))
    for name, metrics in rows.items():
        cells = ["" if metrics.get(m) is None else f"{metrics[m]:.3f}" for m in METRICS]
        print(f"{name:<16}" + "".join(f"{c:>28}" for c in cells))
    for name, metrics in rows.items():
        if "positive_soft_label_share" in metrics:
            print(
                f"{name}: positive soft labels on {metrics['positive_soft_label_share']:.3f} of positive-slide "
                f"training instances (lesion share {metrics['lesion_share']:.3f}; lesion instances positive "
                f"{metrics['lesion_recall']:.3f})"
            )


def summarise(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation over seeds of every metric of every model."""
    import statistics

    summary: dict[str, dict[str, list[float]]] = {}
    for rows in per_seed.values():
        for model, metrics in rows.items():
            for name, value in metrics.items():
                if isinstance(value, float):
                    summary.setdefault(model, {}).setdefault(name, []).append(value)
    return {
        model: {name: [statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0] for name, v in metrics.items()}
        for model, metrics in summary.items()
    }


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict[str, dict]:
    cohort = prepare_cohort(out, args.slides, seed, args.checkpoint, args.lesion_radius)
    options, warm_up = ["--seed_everything", str(seed)], str(max(1, args.epochs // 5))
    queue = [] if args.ins_queue is None else ["--model.init_args.queue_size", str(args.ins_queue)]
    return {
        "ABMIL": fit_and_test("abmil", cohort, out, args.epochs, options + ["--model.init_args.lr", "5e-4"]),
        "INS": fit_and_test(
            "ins", cohort, out, args.epochs, options + ["--model.init_args.prototype_start", warm_up, *queue]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("mil-experiment"))
    parser.add_argument("--slides", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="a new cohort, encoder and run per seed")
    parser.add_argument("--checkpoint", help="embed with this encoder instead of a random-init ResNet-18")
    parser.add_argument("--lesion-radius", type=float, default=300.0, help="level-0 pixels (0.25 µm/px)")
    parser.add_argument(
        "--ins-queue",
        type=int,
        help="INS's momentum queue (default: configs/mil/ins.yaml's 8192). The SupCon over it is most of an "
        "INS step: 1024 takes half the time and gave the figures of 8192 within 0.003 on seeds 0, 1 and 2",
    )
    args = parser.parse_args(argv)
    per_seed = {}
    for seed in args.seeds:
        out = args.out if len(args.seeds) == 1 else args.out / f"seed{seed}"
        per_seed[seed] = run_seed(args, seed, out)
        print(f"\nseed {seed}")
        print_table(per_seed[seed])
        for name, metrics in per_seed[seed].items():
            print(f"{name}: slide predictions, metrics and heatmaps in {metrics['results']}")
    summary = summarise(per_seed)
    if len(args.seeds) > 1:
        print(f"\nmean ± std over seeds {args.seeds}")
        for model, metrics in summary.items():
            print(f"{model:<8}" + "; ".join(f"{name} {m:.3f} ± {sd:.3f}" for name, (m, sd) in metrics.items()))
    results = {"seeds": {str(k): v for k, v in per_seed.items()}, "summary": summary}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
