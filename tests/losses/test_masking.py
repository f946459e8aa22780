"""Alice's block masks: axial blocks, the same through every slice, the stated share masked."""

from __future__ import annotations

import pytest
import torch

from medssl.losses.masked_prediction import masked_embedding_mse
from medssl.losses.masking import axial_block_mask
from medssl.methods.schedules import set_weight_decay


def test_axial_blocks_are_extruded_along_z_and_mask_the_ratio():
    mask = axial_block_mask(3, (8, 64, 64), block=16, ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 8, 64, 64) and mask.dtype == torch.bool
    assert torch.equal(mask, mask[:, :1].expand_as(mask))  # every slice the same
    blocks = mask[:, 0].reshape(3, 4, 16, 4, 16)
    assert bool((blocks.all(dim=(2, 4)) | (~blocks).all(dim=(2, 4))).all())  # whole 16x16 blocks
    assert mask[:, 0].float().mean(dim=(1, 2)).tolist() == [0.75] * 3  # 12 of 16 blocks
    assert not torch.equal(mask[0], mask[1])
    with pytest.raises(ValueError, match="whole number"):
        axial_block_mask(1, (4, 60, 64), block=16)


def test_masked_voxel_reconstruction_counts_masked_voxels_only():
    """Alice's L_rec on masked voxels: the token MSE with one voxel per token."""
    mask = axial_block_mask(1, (2, 4, 4), block=2, ratio=0.5, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(1, 1, 2, 4, 4)
    predicted = torch.where(mask[:, None], 2.0, 1.0)  # error 4 where masked, 1 elsewhere
    flat = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  [B, voxels, 1]
    assert float(masked_embedding_mse(flat(predicted), flat(target), mask.flatten(1))) == pytest.approx(4.0)


def test_weight_decay_schedule_reaches_only_the_decaying_groups():
    weight, bias = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    optimiser = torch.optim.AdamW(
        [{"params": [weight], "weight_decay": 0.04, "decays": True}, {"params": [bias], "weight_decay": 0.0}]
    )
    set_weight_decay(optimiser, 0.4)
    assert [g["weight_decay"] for g in optimiser.param_groups] == [0.4, 0.0]


def test_same_view_token_distillation_by_hand_and_its_centre():
    from medssl.losses import DINOLoss

    loss = DINOLoss(3, student_temperature=0.5, center_momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 3, generator=generator), torch.randn(2, 4, 3, generator=generator)
    got = loss.same_view(student, teacher, teacher_temperature=0.1)
    target = torch.softmax(teacher / 0.1, dim=-1)  # centre 0 at the first call
    expected = -(target * torch.log_softmax(student / 0.5, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(loss.center, 0.1 * teacher.reshape(-1, 3).mean(0, keepdim=True))
