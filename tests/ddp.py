"""Two CPU processes joined by gloo: a function run on both (:func:`on_two_processes`); ``medssl fit``
under DDP as a user would run it from the command line, Lightning re-launching the command for rank 1
(:func:`fit_on_two_cpu_processes`); or ``medssl fit`` on two processes started for it, as torchrun or a
cluster scheduler starts them (:func:`fit_on_two_started_processes`: seconds cheaper, no fresh imports)."""

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


def _joined(rank: int, out: dict, worker: Callable[..., Any], port: int, args: tuple) -> None:
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


def _as_fresh_process(rank: int, entry: Callable[..., None], *args: Any) -> None:
    """``entry(rank, *args)`` with the default start method of a fresh ``python``: a fork server's child
    starts with ``forkserver`` as its default, so DataLoader workers and pools it starts would come from the
    fork server too, each importing the dataset's modules afresh (a 5-second step took 15)."""
    import multiprocessing

    multiprocessing.set_start_method(None, force=True)
    entry(rank, *args)


def _forked(entry: Callable[..., None], processes: int, *args: Any) -> dict[int, Any]:
    """``entry(rank, out, *args)`` on ``processes`` processes forked from the preloaded fork server; ``out``
    (a shared dict) holds what each rank put there."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOADED)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(
            _as_fresh_process, args=(entry, out, *args), nprocs=processes, join=True, start_method="forkserver"
        )
        return dict(out)


def _forked_pair(entry: Callable[..., None], *args: Any) -> dict[int, Any]:
    return _forked(entry, 2, *args)


def on_two_processes(worker: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """``worker(rank, *args)`` on two fresh CPU processes in one gloo process group (a module-level
    function, so it pickles); what each returned, by rank."""
    return _forked_pair(_joined, worker, free_port(), args)


# what both DDP helpers add to ``medssl fit``'s arguments: later flags win over any device settings
TWO_CPU_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def _fit_as_started_rank(rank: int, out: dict, fit_args: list[str], port: int) -> None:
    """One rank of ``medssl fit`` in a process started for it: ``LOCAL_RANK`` in the environment tells
    Lightning that something else launched the ranks (as torchrun does), so it joins the process group
    instead of re-running the command. Records the Trainer's rank and the process group's size."""
    import torch.distributed as dist

    from medssl.cli import run_lightning  # what `medssl fit` runs

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0", LOCAL_RANK=str(rank)
    )
    try:
        cli = run_lightning([*fit_args, *TWO_CPU_PROCESSES])
        out[rank] = (cli.trainer.global_rank, dist.get_world_size())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def fit_on_two_started_processes(fit_args: list[str]) -> None:
    """``medssl fit <fit_args>`` under DDP on two CPU processes started for it, each forked from the fork
    server with torch and Lightning loaded (no subprocess imports them again, unlike
    :func:`fit_on_two_cpu_processes`, whose command-line path the ``medssl fit`` DDP tests of
    ``tests/methods/test_cli_fit.py`` keep). Asserts both ranks joined one group of two and finished."""
    ranks = _forked_pair(_fit_as_started_rank, list(fit_args), free_port())
    assert ranks == {0: (0, 2), 1: (1, 2)}, ranks


def fit_on_two_cpu_processes(fit_args: list[str], timeout: float = 300) -> None:
    """``python -m medssl.cli <fit_args> --trainer.devices 2 --trainer.strategy ddp`` on CPU, in a
    subprocess because Lightning re-launches the command once per rank; later flags win, so these
    override any device settings in ``fit_args``. Asserts both ranks joined and the run finished."""
    command = [sys.executable, "-m", "medssl.cli", *fit_args, *TWO_CPU_PROCESSES]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout


def fit_mil_on_two_processes(model: str, cohort: dict, root: Path, *extra: str) -> None:
    """``medssl fit --config configs/mil/<model>.yaml`` on the cohort's embeddings under 2-process DDP."""
    fit_on_two_started_processes([*fit_arguments(model, cohort, root), *extra])
