"""A Lightning Trainer for tests: one CPU process, nothing printed or logged, the medssl sampler kept."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


def quiet_trainer(root: str | Path, **overrides) -> pl.Trainer:
    """One CPU device, no logger, progress bar or model summary, ``use_distributed_sampler=False`` (as
    ``medssl fit`` sets it for medssl DataModules); ``overrides`` are any other Trainer arguments."""
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=root,
    )
    return pl.Trainer(**{**options, **overrides})


def toy_arguments(config: str | Path, cache: str | Path, *extra: str) -> list[str]:
    """LightningCLI arguments (no subcommand) that run ``config`` on ``cache`` at toy size: one epoch of
    two training batches, no sanity check, no loader workers, no progress bar; ``extra`` last (wins)."""
    return [
        "--config",
        str(config),
        "--data.init_args.cache",
        str(cache),
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
