"""Run ``medssl fit`` on two CPU processes (DDP over gloo), as a user would from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MIL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mil"


def fit_on_two_cpu_processes(fit_args: list[str], timeout: float = 300) -> None:
    """``python -m medssl.cli <fit_args> --trainer.devices 2 --trainer.strategy ddp`` on CPU, in a
    subprocess because Lightning re-launches the command once per rank; later flags win, so these
    override any device settings in ``fit_args``. Asserts both ranks joined and the run finished."""
    command = [
        sys.executable,
        "-m",
        "medssl.cli",
        *fit_args,
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout


def fit_mil_on_two_cpu_processes(model: str, cohort: dict, root: Path, *extra: str) -> None:
    """``medssl fit --config configs/mil/<model>.yaml`` on the cohort's embeddings under 2-process DDP."""
    fit_on_two_cpu_processes(
        [
            "fit",
            "--config",
            str(MIL_CONFIGS / f"{model}.yaml"),
            "--data.init_args.cache",
            str(cohort["cache"]),
            "--data.init_args.features",
            str(cohort["features"]),
            "--data.init_args.positive_class",
            "positive",
            "--data.init_args.num_workers",
            "0",
            "--model.init_args.in_dim",
            str(cohort["in_dim"]),
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ],
        timeout=180,
    )
