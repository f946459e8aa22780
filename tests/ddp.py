"""Two CPU processes joined by gloo: a function run on both (:func:`on_two_processes`), or ``medssl fit``
under DDP as a user would run it from the command line (:func:`fit_on_two_cpu_processes`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
from mil_experiment import fit_arguments  # noqa: E402  (pipelines/ is a folder of scripts, not a package)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _joined(rank: int, worker: Callable[..., Any], port: int, out: dict, args: tuple) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = worker(rank, *args)
    finally:
        dist.destroy_process_group()


# Imported once, by the fork server that starts every worker process of the session: each test's two
# processes are forked from it with these loaded instead of importing them afresh (seconds per process,
# most of such a test's time under spawn). The server runs no torch op and holds one thread, so forking it
# is safe, unlike forking pytest. Like spawned ones, the workers get the caller's sys.path and working
# directory; their environment is the one the server started in (the first call's).
PRELOADED = ["torch", "lightning.pytorch", "monai.networks.nets", "pytest"]


def on_two_processes(worker: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """``worker(rank, *args)`` on two fresh CPU processes in one gloo process group (a module-level
    function, so it pickles); what each returned, by rank."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOADED)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(
            _joined, args=(worker, free_port(), out, args), nprocs=2, join=True, start_method="forkserver"
        )
        return dict(out)


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
