"""Slide-level learning tests; helpers shared by them."""

from __future__ import annotations

from pathlib import Path

from tests.ddp import fit_on_two_cpu_processes

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mil"


def fit_mil_on_two_cpu_processes(model: str, cohort: dict, root: Path, *extra: str) -> None:
    """``medssl fit --config configs/mil/<model>.yaml`` on the cohort's embeddings under 2-process DDP."""
    fit_on_two_cpu_processes([
        "fit", "--config", str(CONFIGS / f"{model}.yaml"),
        "--data.init_args.cache", str(cohort["cache"]), "--data.init_args.features", str(cohort["features"]),
        "--data.init_args.num_workers", "0", "--model.init_args.in_dim", str(cohort["in_dim"]),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra,
    ], timeout=180)
