"""Lightning callbacks that medssl's methods share.

:class:`RankMeCheckpoint` chooses a checkpoint without labels: after a warm-up, it keeps the epoch whose
training embeddings have the highest RankMe (Garrido et al., ICML 2023, the smooth effective rank), the
rule MADELEINE (Jaume et al., ECCV 2024) uses for its slide encoder. Pretraining usually has no labelled
validation set, and the last epoch is not always the best one; RankMe tracks downstream accuracy well
within one method's run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from medssl.eval import rankme


def chosen_epoch(history: Sequence[tuple[int, float]], warmup_epochs: int) -> int | None:
    """The epoch with the highest RankMe among those at index ≥ ``warmup_epochs`` (0-based epochs, so
    ``warmup_epochs=20`` considers epochs from the 21st on, "after epoch 20"); the earliest on ties;
    None before any qualifies."""
    eligible = [(value, -epoch) for epoch, value in history if epoch >= warmup_epochs]
    return -max(eligible)[1] if eligible else None


class RankMeCheckpoint(pl.Callback):
    """Save ``dirpath/filename`` at the end of every epoch whose RankMe beats all earlier eligible epochs.

    The embeddings are what the model's ``training_step`` returns under ``key`` (a ``[n, d]`` tensor per
    step; :class:`~medssl.methods.madeleine.Madeleine` returns its H&E slide embeddings), gathered from
    every rank, so all ranks agree. The epoch's value is logged as ``train/rankme``; ``best_epoch`` and
    ``best_rankme`` say what was kept, and survive a resume (callback state is in the checkpoint).
    ``dirpath`` defaults to the run's ``checkpoints`` folder."""

    def __init__(
        self,
        warmup_epochs: int = 20,
        dirpath: str | None = None,
        filename: str = "rankme-best.ckpt",
        key: str = "embeddings",
    ):
        self.warmup_epochs, self.dirpath, self.filename, self.key = warmup_epochs, dirpath, filename, key
        self.history: list[tuple[int, float]] = []
        self.best_epoch: int | None = None
        self.best_rankme: float | None = None
        self.best_path: Path | None = None
        self._epoch: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict) and isinstance(outputs.get(self.key), torch.Tensor):
            self._epoch.append(outputs[self.key].detach().float())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        embeddings = _gather_rows(trainer, self._epoch)
        self._epoch = []
        if embeddings is None or len(embeddings) < 2:
            return
        value, epoch = rankme(embeddings), trainer.current_epoch
        pl_module.log("train/rankme", value, rank_zero_only=True)
        self.history.append((epoch, value))
        if chosen_epoch(self.history, self.warmup_epochs) == epoch:
            self.best_epoch, self.best_rankme = epoch, value
            folder = (
                Path(self.dirpath)
                if self.dirpath
                else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
            )
            self.best_path = folder / self.filename
            trainer.save_checkpoint(self.best_path)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "best_epoch": self.best_epoch, "best_rankme": self.best_rankme}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(e), float(v)) for e, v in state_dict.get("history", [])]
        self.best_epoch, self.best_rankme = state_dict.get("best_epoch"), state_dict.get("best_rankme")


def _gather_rows(trainer: pl.Trainer, chunks: list[torch.Tensor]) -> torch.Tensor | None:
    """This epoch's rows from every rank (ranks may hold different counts: padded to the largest)."""
    local = torch.cat(chunks) if chunks else None
    if trainer.world_size == 1:
        return local
    width = torch.tensor([0 if local is None else local.shape[1]], device=trainer.strategy.root_device)
    count = torch.tensor([0 if local is None else local.shape[0]], device=width.device)
    counts = trainer.strategy.all_gather(count).flatten()
    dim = int(trainer.strategy.all_gather(width).max())
    if dim == 0:
        return None
    padded = torch.zeros(int(counts.max()), dim, device=width.device)
    if local is not None:
        padded[: len(local)] = local.to(width.device)
    every = trainer.strategy.all_gather(padded)  # [world, max, dim]
    return torch.cat([every[r, : int(n)] for r, n in enumerate(counts.tolist())]).cpu()
