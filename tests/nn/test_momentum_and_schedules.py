"""EMA teacher, momentum queue, spherical k-means and schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medssl.losses import spherical_kmeans
from medssl.methods.schedules import cosine_schedule
from medssl.nn.momentum import MomentumQueue, ema_update


def test_ema_update_formula_and_extremes():
    torch.manual_seed(0)
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    nn.init.normal_(student.weight)
    student.running_mean.normal_()
    before = teacher.weight.clone()
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight)
    torch.testing.assert_close(teacher.running_mean, 0.1 * student.running_mean)
    frozen = teacher.weight.clone()
    ema_update(teacher, student, 1.0)
    torch.testing.assert_close(teacher.weight, frozen)
    ema_update(teacher, student, 0.0)
    torch.testing.assert_close(teacher.weight, student.weight)


def test_queue_is_fifo_with_labels_and_survives_a_state_dict():
    queue = MomentumQueue(size=5, dim=2, with_labels=True)
    for start in (0, 3, 6):
        keys = torch.arange(start, start + 3, dtype=torch.float32)[:, None].repeat(1, 2)
        queue.push(keys, labels=torch.arange(start, start + 3))
    keys, labels = queue.contents()
    assert keys[:, 0].tolist() == [4, 5, 6, 7, 8] and labels.tolist() == [4, 5, 6, 7, 8]
    copy = MomentumQueue(size=5, dim=2, with_labels=True)
    copy.load_state_dict(queue.state_dict())
    assert torch.equal(copy.contents()[0], keys)
    partial = MomentumQueue(size=5, dim=2)
    partial.push(torch.ones(2, 2))
    assert len(partial.contents()[0]) == 2


def test_spherical_kmeans_recovers_planted_clusters():
    torch.manual_seed(2)
    directions = torch.nn.functional.normalize(torch.randn(4, 16), dim=1) * 10
    points = torch.cat([d + torch.randn(50, 16) for d in directions])
    centroids, assignments = spherical_kmeans(points, k=4, iterations=20, seed=1)
    truth = torch.arange(4).repeat_interleave(50)
    # Same partition up to relabelling: every planted cluster maps to one found cluster.
    for c in range(4):
        assert len(set(assignments[truth == c].tolist())) == 1
    assert len(set(assignments.tolist())) == 4
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(4))


def test_cosine_schedule_warmup_and_ends():
    assert cosine_schedule(0, 100, base=1.0, final=0.0, warmup_steps=10, warmup_start=0.1) == pytest.approx(0.1)
    assert cosine_schedule(5, 100, 1.0, 0.0, 10, 0.1) == pytest.approx(0.55)
    assert cosine_schedule(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert cosine_schedule(55, 100, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert cosine_schedule(100, 100, 1.0, 0.2, 10) == pytest.approx(0.2)
    assert cosine_schedule(500, 100, 1.0, 0.2, 10) == pytest.approx(0.2)
    # EMA momentum rising from 0.996 to 1, as BYOL/DINO schedule it.
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert math.isclose(cosine_schedule(25, 100, 0.996, 1.0), 1.0 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
