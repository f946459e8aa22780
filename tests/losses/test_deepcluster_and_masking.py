"""DeepCluster-v2's memory bank and pseudo-labels, masked embedding prediction and LARS, against hand
computations; the bank's merge across two processes equals one process holding everything."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from medssl.losses.deepcluster import ClusterMemory, deepcluster_cross_entropy
from medssl.losses.masked_prediction import masked_embedding_mse, random_token_mask
from medssl.methods.lars import LARS
from tests.ddp import on_two_processes


def three_blobs(n_per: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:3] * 5
    labels = torch.arange(3).repeat_interleave(n_per)
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator), labels


def test_kmeans_pseudo_labels_recover_clusters_and_prototypes_are_frozen_buffers():
    points, truth = three_blobs()
    memory = ClusterMemory(len(points), points.shape[1], clusters=[3, 3], views=2, iterations=10)
    memory.store(torch.arange(len(points)), [points, points.flip(1)])
    memory.cluster(seed=0)
    for head in range(2):
        labels = memory.assignments[head]
        # the same partition as the truth, whatever the cluster numbering
        assert all(len(set(labels[truth == c].tolist())) == 1 for c in range(3))
        assert len(set(labels.tolist())) == 3
        torch.testing.assert_close(memory.prototypes(head).norm(dim=1), torch.ones(3))
    assert not list(memory.parameters())  # nothing for an optimiser to move
    assert {f"prototypes_{h}" for h in range(2)} <= set(memory.state_dict())


def test_deepcluster_loss_is_cross_entropy_to_the_pseudo_labels_of_every_head_and_view():
    points, _ = three_blobs()
    memory = ClusterMemory(len(points), points.shape[1], clusters=[3, 2], views=2)
    index = torch.arange(len(points))
    memory.store(index, [points, points])
    memory.cluster()
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    got = memory.loss(index[:4], [z1, z2], temperature=0.1)
    terms = []
    for h in range(2):
        for z in (z1, z2):
            scores = F.normalize(z, dim=1) @ memory.prototypes(h).T / 0.1
            target = memory.assignments[h, :4]
            terms.append(-(scores.log_softmax(1)[torch.arange(4), target]).mean())
    torch.testing.assert_close(got, torch.stack(terms).mean())


def test_samples_without_a_pseudo_label_are_left_out_and_an_empty_batch_is_zero():
    scores = torch.randn(3, 4, requires_grad=True)
    loss = deepcluster_cross_entropy(scores, torch.tensor([2, -1, 0]), temperature=0.5)
    torch.testing.assert_close(loss, F.cross_entropy(scores[[0, 2]] / 0.5, torch.tensor([2, 0])))
    empty = deepcluster_cross_entropy(scores, torch.full((3,), -1), temperature=0.5)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_bank_smaller_than_k_is_refused():
    with pytest.raises(ValueError, match="at least as many samples"):
        ClusterMemory(4, 8, clusters=[5])


# -- two processes: the merged bank and its clustering equal one process's --------------------------
SIZE, DIM = 12, 6


def _batches():
    """Two steps of 4 samples per rank, then a third step revisiting samples on the *other* rank (as a
    new epoch's shuffle does): the newest copy must win."""
    generator = torch.Generator().manual_seed(1)
    data = [torch.randn(SIZE, DIM, generator=generator) for _ in range(2)]  # per view
    newer = [torch.randn(SIZE, DIM, generator=generator) for _ in range(2)]
    steps = [
        {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]},
        {0: [8, 9, 10, 11], 1: []},
        {0: [4, 5], 1: [0, 1]},  # rewritten by the other rank
    ]
    return data, newer, steps


def _fill(memory: ClusterMemory, rank_id: int | None) -> None:
    data, newer, steps = _batches()
    for k, step in enumerate(steps):
        source = newer if k == 2 else data
        ranks = [rank_id] if rank_id is not None else [0, 1]
        for r in ranks:
            index = torch.tensor(step[r], dtype=torch.long)
            if rank_id is None and r == 1:
                memory.step -= 1  # one process plays both ranks of the same step
            memory.store(index, [v[index] for v in source])


def _worker(rank_id: int) -> tuple:
    memory = ClusterMemory(SIZE, DIM, clusters=[3, 4], views=2)
    _fill(memory, rank_id)
    memory.synchronise()
    memory.cluster(seed=5)
    z = torch.randn(SIZE, DIM, generator=torch.Generator().manual_seed(2), requires_grad=True)
    half = slice(rank_id * SIZE // 2, (rank_id + 1) * SIZE // 2)
    loss = memory.loss(torch.arange(SIZE)[half], [z[half], z[half] * 2])
    loss.backward()
    grad = z.grad.clone()
    dist.all_reduce(grad)
    return memory.bank.clone(), memory.assignments.clone(), grad / 2


def test_two_processes_merge_to_the_single_process_bank_clusters_loss_and_gradient():
    single = ClusterMemory(SIZE, DIM, clusters=[3, 4], views=2)
    _fill(single, None)
    single.cluster(seed=5)
    z = torch.randn(SIZE, DIM, generator=torch.Generator().manual_seed(2), requires_grad=True)
    single.loss(torch.arange(SIZE), [z, z * 2]).backward()
    data, newer, _ = _batches()
    expected = data[0].clone()
    expected[[4, 5, 0, 1]] = newer[0][[4, 5, 0, 1]]
    torch.testing.assert_close(single.bank[0], F.normalize(expected, dim=1))
    ranks = on_two_processes(_worker)
    for rank_id in range(2):
        bank, assignments, grad = ranks[rank_id]
        torch.testing.assert_close(bank, single.bank)
        assert torch.equal(assignments, single.assignments)
        torch.testing.assert_close(grad, z.grad, atol=1e-6, rtol=1e-5)


# -- masked embedding prediction ------------------------------------------------------------------
def test_token_mask_hides_ceil_of_the_ratio_in_every_row():
    mask = random_token_mask(5, 64, 0.1, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [math.ceil(0.1 * 64)] * 5
    assert len({tuple(row.tolist()) for row in mask}) > 1  # rows differ
    assert random_token_mask(2, 3, 0.0).sum(1).tolist() == [1, 1]  # always something to predict
    assert random_token_mask(2, 3, 1.0).sum(1).tolist() == [2, 2]  # and something to predict from


def test_masked_mse_counts_hidden_slices_only_and_reference_reproduces_the_code():
    target = torch.zeros(1, 4, 2)
    predicted = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    mask = torch.tensor([[False, True, False, True]])
    # hidden slices 1 and 3: errors 4 and 16 per feature
    assert float(masked_embedding_mse(predicted, target, mask)) == pytest.approx((4 + 16) / 2)
    # the code: mean over all slices (1+4+9+16)/4, divided by int(0.5 * 4) = 2
    assert float(masked_embedding_mse(predicted, target, mask, "reference", mask_ratio=0.5)) == pytest.approx(7.5 / 2)
    # a perfect prediction of the visible slices does not lower the masked loss
    copied = predicted.clone()
    copied[0, [0, 2]] = 0
    assert float(masked_embedding_mse(copied, target, mask)) == float(masked_embedding_mse(predicted, target, mask))


# -- LARS ---------------------------------------------------------------------------------------------
def test_lars_step_matches_the_trust_ratio_by_hand_and_leaves_unmarked_groups_plain():
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad, bias.grad = torch.tensor([0.6, 0.8]), torch.tensor([0.5])  # grad norm 1
    optimiser = LARS(
        [{"params": [weight], "weight_decay": 0.1, "decays": True}, {"params": [bias], "weight_decay": 0.0}],
        lr=2.0,
        trust_coefficient=0.01,
    )
    optimiser.step()
    ratio = 0.01 * 5 / (1 + 0.1 * 5 + 1e-8)
    expected = torch.tensor([3.0, 4.0]) - 2.0 * ratio * (torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(weight.detach(), expected)
    torch.testing.assert_close(bias.detach(), torch.tensor([1.0 - 2.0 * 0.5]))
    assert optimiser.param_groups[0]["weight_decay"] == 0.1  # restored after the step
