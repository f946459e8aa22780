"""Run ``medssl fit`` on two CPU processes (DDP over gloo), as a user would from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
from mil_experiment import fit_arguments  # noqa: E402  (pipelines/ is a folder of scripts, not a package)


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
    fit_on_two_cpu_processes([*fit_arguments(model, cohort, root), *extra], timeout=180)
