"""``lr_scaling``: "none" (the default) uses ``lr`` as given; "linear" reads it as the rate for 256 samples,
as the SSL papers state it, and trains at ``lr × global batch / 256``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medssl.methods.schedules import scaled_lr
from medssl.methods.simclr import SimCLR
from tests.trainers import quiet_trainer

BACKBONE = {"name": "resnet18", "spatial_dims": 2, "in_channels": 3, "width": 0.25}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _base_lr(model: SimCLR, batch_size: int, devices: int = 1, accumulate: int = 1) -> float:
    """The peak rate of the optimiser ``configure_optimizers`` builds under a trainer of that shape."""
    model._trainer = SimpleNamespace(  # pyright: ignore[reportAttributeAccessIssue]
        datamodule=SimpleNamespace(batch_size=batch_size),
        world_size=devices,
        accumulate_grad_batches=accumulate,
        estimated_stepping_batches=10,
        max_epochs=1,
    )
    optimizer = model.configure_optimizers()["optimizer"]
    rates = {group["initial_lr"] for group in optimizer.param_groups}
    assert len(rates) == 1
    return rates.pop()


def test_linear_scaling_matches_the_hand_computation():
    assert scaled_lr(0.3, "linear", 64) == pytest.approx(0.075)  # 0.3 × 64 / 256
    assert scaled_lr(0.3, "none", 64) == 0.3
    with pytest.raises(ValueError, match="lr_scaling must be 'none' or 'linear'"):
        scaled_lr(0.3, "sqrt", 64)
    model = SimCLR(backbone=BACKBONE, proj_hidden_dim=16, proj_dim=8, lr=0.3, lr_scaling="linear")
    assert _base_lr(model, batch_size=64) == pytest.approx(0.075)
    # global batch = per-device batch × devices × accumulated batches: 64 × 4 × 2 = 512
    assert _base_lr(model, batch_size=64, devices=4, accumulate=2) == pytest.approx(0.6)


def test_the_default_leaves_lr_unchanged():
    model = SimCLR(backbone=BACKBONE, proj_hidden_dim=16, proj_dim=8, lr=0.3)
    assert model.hparams.lr_scaling == "none"
    assert _base_lr(model, batch_size=64, devices=4, accumulate=2) == 0.3


def test_a_real_trainer_supplies_the_global_batch(split_cache, tmp_path):
    from medssl.data.datamodules import TileDataModule

    model = SimCLR(backbone=BACKBONE, proj_hidden_dim=16, proj_dim=8, lr=0.3, lr_scaling="linear", warmup_epochs=0)
    data = TileDataModule(str(split_cache), batch_size=8, num_workers=0, views="pair", view_size=32, val_split=None)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        enable_checkpointing=False,
    )
    trainer.fit(model, data)
    (group, *_) = trainer.optimizers[0].param_groups
    assert group["initial_lr"] == pytest.approx(0.3 * 8 * 2 / 256)


def test_a_scaled_lr_below_min_lr_never_rises_to_it():
    """Alice's README: lr 5e-5 × 8 × 8 / 256 = 1.25e-5 under min_lr 1e-4 would make the cosine climb."""
    model = SimCLR(backbone=BACKBONE, proj_hidden_dim=16, proj_dim=8, lr=5e-5, lr_scaling="linear", min_lr=1e-4)
    with pytest.warns(UserWarning, match="min_lr"):
        _base_lr(model, batch_size=8, devices=8)
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    factors = [scheduler.lr_lambdas[0](step) for step in range(0, 11)]
    assert max(factors) <= 1.0 and factors[-1] == pytest.approx(1.0)  # held at the peak, never above
