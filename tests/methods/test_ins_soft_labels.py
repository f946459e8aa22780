"""INS keeps one soft label per training instance. It sizes that table from the instance indices it is
given, never by asking the data module, and keeps what it learnt when the table grows."""

from __future__ import annotations

import math

import pytest
import torch

from medssl.methods.ins import INS


def test_the_soft_label_table_grows_with_the_indices_it_sees():
    model = INS(in_dim=6, hidden_dim=8, proj_dim=4, queue_size=16)
    assert model.soft_labels.shape == (0, 2)
    positive = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    first = model._soft_labels(torch.tensor([3, 1]), positive)
    assert model.soft_labels.shape == (4, 2)
    assert first.tolist() == [[0.0, 1.0], [0.0, 1.0]]  # the slide's label on first sight
    assert all(math.isnan(v) for v in model.soft_labels[[0, 2]].flatten().tolist())  # not seen yet
    model._set_soft_labels(torch.tensor([3]), torch.tensor([[0.2, 0.8]]))
    model._soft_labels(torch.tensor([9]), torch.tensor([[1.0, 0.0]]))
    assert model.soft_labels.shape == (10, 2)
    assert model.soft_labels[3].tolist() == pytest.approx([0.2, 0.8])  # kept through the growth
    assert model.soft_labels[9].tolist() == [1.0, 0.0]


def test_num_instances_allocates_the_table_up_front():
    model = INS(in_dim=6, hidden_dim=8, proj_dim=4, queue_size=16, num_instances=7)
    assert model.soft_labels.shape == (7, 2)
    model._soft_labels(torch.tensor([2]), torch.tensor([[1.0, 0.0]]))
    assert model.soft_labels.shape == (7, 2)
