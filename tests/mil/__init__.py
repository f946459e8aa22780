"""Slide-level learning tests; helpers shared by them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mil"


def fit_on_two_cpu_processes(model: str, cohort: dict, root: Path, *extra: str) -> None:
    """``medssl fit --config configs/mil/<model>.yaml`` on the cohort with ``--trainer.devices 2
    --trainer.strategy ddp`` on CPU (gloo), in a subprocess because Lightning re-launches the command."""
    command = [sys.executable, "-m", "medssl.cli", "fit", "--config", str(CONFIGS / f"{model}.yaml"),
               "--data.init_args.cache", str(cohort["cache"]), "--data.init_args.features", str(cohort["features"]),
               "--data.init_args.num_workers", "0", "--model.init_args.in_dim", str(cohort["in_dim"]),
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout
