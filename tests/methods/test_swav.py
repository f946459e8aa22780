"""SwAV's moving parts: multi-crop passes grouped by size, codes from global crops only, the queue
entering the assignment once full, and frozen prototypes at the start."""

from __future__ import annotations

import pytest
import torch

import medssl.methods.swav as swav_module
from medssl.methods.swav import SwAV

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*")


def small_swav(**kwargs) -> SwAV:
    torch.manual_seed(0)
    options = dict(backbone={"name": "resnet18", "in_channels": 3}, proj_hidden_dim=32, proj_dim=16, n_prototypes=8)
    return SwAV(**{**options, **kwargs})


def multi_crop(batch: int = 4) -> list[torch.Tensor]:
    return [torch.rand(batch, 3, 32, 32) for _ in range(2)] + [torch.rand(batch, 3, 16, 16) for _ in range(3)]


def test_multi_crop_runs_one_encoder_pass_per_size_and_assigns_global_crops(monkeypatch):
    model = small_swav(queue_length=0)
    passes, assigned = [], []
    model.encoder.register_forward_hook(lambda module, inputs, output: passes.append(inputs[0].shape))
    real = swav_module.sinkhorn_knopp
    monkeypatch.setattr(swav_module, "sinkhorn_knopp", lambda s, *a: assigned.append(s.shape) or real(s, *a))
    loss = model.training_step({"views": multi_crop()}, 0)
    assert [tuple(p) for p in passes] == [(8, 3, 32, 32), (12, 3, 16, 16)]
    assert assigned == [(4, 8), (4, 8)]  # the two global crops, not the local ones
    assert torch.isfinite(loss) and loss.requires_grad


def test_queue_joins_the_assignment_once_full(monkeypatch):
    model = small_swav(queue_length=8, queue_start_epoch=0)
    rows = []
    real = swav_module.sinkhorn_knopp
    monkeypatch.setattr(swav_module, "sinkhorn_knopp", lambda s, *a: rows.append(len(s)) or real(s, *a))
    for step in range(3):
        model.training_step({"views": multi_crop()[:2]}, step)
    assert rows == [4, 4, 4, 4, 12, 12]  # two crops per step; full after two pushes of 4
    assert int(model.queues[0].filled) == 8 and "queues.0.keys" in model.state_dict()


def test_queue_waits_for_its_start_epoch():
    model = small_swav(queue_length=8, queue_start_epoch=5)
    model.training_step({"views": multi_crop()[:2]}, 0)
    assert int(model.queues[0].filled) == 0


@pytest.mark.parametrize("freeze_steps, frozen", [(1, True), (0, False)])
def test_prototypes_frozen_for_the_first_steps(freeze_steps, frozen):
    model = small_swav(freeze_prototypes_steps=freeze_steps)
    model.training_step({"views": multi_crop()[:2]}, 0).backward()
    model.on_after_backward()
    assert (model.prototypes.prototypes.weight.grad is None) == frozen
    assert model.projector.net[0].weight.grad is not None


def test_prototypes_renormalised_each_step():
    model = small_swav()
    with torch.no_grad():
        model.prototypes.prototypes.weight.mul_(3.0)
    model.on_train_batch_start({}, 0)
    torch.testing.assert_close(model.prototypes.prototypes.weight.norm(dim=1), torch.ones(8))
