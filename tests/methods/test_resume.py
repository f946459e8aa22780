"""Checkpoints resume exactly: stopping after epoch 1 and resuming gives the weights, optimiser,
schedule, queue and prototypes of an uninterrupted run, and the file loads without unpickling code."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from medssl.data.datamodules import TileDataModule
from medssl.methods.swav import SwAV
from tests.trainers import quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _fit(cache, out, max_epochs: int, ckpt_path=None) -> tuple[SwAV, pl.Trainer]:
    pl.seed_everything(0)
    model = SwAV(
        backbone={"name": "resnet18", "in_channels": 3, "width": 0.25},
        proj_hidden_dim=32,
        proj_dim=16,
        n_prototypes=8,
        queue_length=16,
        queue_start_epoch=1,
        freeze_prototypes_steps=2,
        lr=0.05,
        warmup_epochs=1,
    )
    data = TileDataModule(str(cache), batch_size=8, num_workers=0, views="pair", view_size=32, val_split=None)
    trainer = quiet_trainer(out, max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=0, deterministic=True)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer


def test_resume_equals_uninterrupted(split_cache, tmp_path):
    straight, _ = _fit(split_cache, tmp_path / "straight", max_epochs=3)
    _, first = _fit(split_cache, tmp_path / "interrupted", max_epochs=1)
    checkpoint = first.checkpoint_callback.best_model_path
    # Lightning's checkpoints hold tensors and plain containers only: torch's safe loader accepts them.
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 0 and int(state["state_dict"]["queues.0.filled"]) == 0
    resumed, trainer = _fit(split_cache, tmp_path / "interrupted", max_epochs=3, ckpt_path=checkpoint)
    assert trainer.global_step == 9 and int(resumed.queues[0].filled) == 16
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    # and the run was not trivially static: training moved the weights
    pl.seed_everything(0)
    initial = SwAV(
        backbone={"name": "resnet18", "in_channels": 3, "width": 0.25},
        proj_hidden_dim=32,
        proj_dim=16,
        n_prototypes=8,
        queue_length=16,
    )
    assert not torch.equal(initial.encoder.network.conv1.weight, straight.encoder.network.conv1.weight)
