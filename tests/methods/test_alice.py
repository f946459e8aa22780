"""Alice's training step on random volumes: every loss present, gradients where they belong (never into
the teacher), last layers frozen in the first epoch, the EMA teacher and the temperature schedule."""

from __future__ import annotations

import pytest
import torch

from medssl.methods.alice import Alice

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*", "ignore:.*self.log.*")
TINY = dict(
    backbone={"feature_size": 12, "depths": (1, 1, 1, 1), "window_size": 4},
    out_dim=16,
    patch_out_dim=16,
    head_hidden_dim=32,
    bottleneck_dim=8,
    casa_heads=2,
    mask_block=8,
)


def tiny(**kwargs) -> Alice:
    torch.manual_seed(0)
    return Alice(**{**TINY, **kwargs})


def views() -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"views": [torch.rand(1, 1, 32, 32, 64, generator=generator) for _ in range(2)]}


def test_a_step_trains_student_head_and_casa_but_never_the_teacher(monkeypatch):
    model = tiny()
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, float(value.detach())))
    loss = model.training_step(views(), 0)
    loss.backward()
    assert {"train/cls", "train/patch", "train/rec", "train/loss"} <= set(logged)
    assert logged["train/loss"] == pytest.approx(logged["train/cls"] + logged["train/patch"] + 10 * logged["train/rec"])
    for part in (model.student, model.head.mlp, model.casa):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in [*model.teacher.parameters(), *model.teacher_head.parameters()])
    model.on_after_backward()  # epoch 0: the last layers stay as they are
    assert all(p.grad is None for p in model.head.last_layers())


def test_the_teacher_follows_the_student_by_ema_and_its_temperature_warms_up():
    model = tiny(warmup_teacher_epochs=2)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = next(model.teacher.parameters()).clone()
    model.on_train_batch_end(None, views(), 0)
    after, student = next(model.teacher.parameters()), next(model.student.parameters())
    torch.testing.assert_close(after, 0.996 * before + 0.004 * student.detach())
    assert model.teacher_temperature() == pytest.approx(0.008)


def test_reconstruction_counts_masked_voxels_or_all():
    model = tiny()
    clean, predicted = torch.zeros(1, 1, 2, 8, 8), torch.ones(1, 1, 2, 8, 8)
    predicted[..., :4, :] = 3.0
    mask = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    mask[..., :4, :] = True
    assert float(model.reconstruction_loss(predicted, clean, mask)) == pytest.approx(9.0)
    model.hparams.reconstruction = "all"
    assert float(model.reconstruction_loss(predicted, clean, mask)) == pytest.approx(5.0)


def test_the_teacher_exports_and_fine_tunes_as_a_swinunetr_segmenter(tmp_path, capsys):
    """``medssl export`` of an Alice checkpoint gives the teacher's SwinUNETR; the 3D segmentation task
    loads every one of its weights and adds only the output convolution."""
    import lightning.pytorch as pl

    from medssl.cli import main
    from medssl.tasks.segmentation import Segmenter

    model = tiny()
    with torch.no_grad():  # the student moves away: the export must be the teacher (the EMA)
        for parameter in model.student.parameters():
            parameter.add_(1.0)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "alice.ckpt")
    assert main(["export", str(tmp_path / "alice.ckpt"), "--out", str(tmp_path / "encoder.pt")]) == 0
    segmenter = Segmenter(num_classes=3, encoder=str(tmp_path / "encoder.pt"), backbone=None)
    teacher, loaded = model.teacher.network.state_dict(), segmenter.encoder.network.state_dict()
    assert teacher.keys() == loaded.keys() and all(torch.equal(teacher[k], loaded[k]) for k in teacher)
    assert segmenter(torch.rand(1, 1, 32, 32, 64)).shape == (1, 3, 32, 32, 64)
