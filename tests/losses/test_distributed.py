"""Two CPU processes (gloo): gathered losses and DDP-averaged gradients equal one process on the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist

from medssl.losses import barlow_twins, info_nce, sinkhorn_knopp, swapped_prediction
from tests.ddp import on_two_processes

N, D = 8, 6


def global_batch():
    torch.manual_seed(0)
    return torch.randn(N, 4), torch.randn(N, 4), torch.nn.Linear(4, D)


def losses(layer, x1, x2):
    z1, z2 = layer(x1), layer(x2)
    q = sinkhorn_knopp(z2.detach())
    return {
        "info_nce": info_nce(z1, z2, 0.3),
        "dcl": info_nce(z1, z2, 0.3, decoupled=True),
        "barlow": barlow_twins(z1, z2),
        "swav": swapped_prediction([z1, z2], [q, q]),
    }


def _worker(rank: int) -> dict:
    x1, x2, layer = global_batch()
    half = slice(rank * N // 2, (rank + 1) * N // 2)
    result = {}
    for name, value in losses(layer, x1[half], x2[half]).items():
        layer.zero_grad()
        value.backward(retain_graph=True)
        grad = layer.weight.grad.clone()
        dist.all_reduce(grad)  # what DDP does: average parameter gradients over ranks
        reduced = value.detach().clone()
        dist.all_reduce(reduced)
        result[name] = (float(reduced) / 2, grad / 2)
    return result


def test_two_process_losses_and_gradients_equal_single_process():
    x1, x2, layer = global_batch()
    single = {}
    for name, value in losses(layer, x1, x2).items():
        layer.zero_grad()
        value.backward(retain_graph=True)
        single[name] = (float(value.detach()), layer.weight.grad.clone())
    ranks = on_two_processes(_worker)
    for name, (value, grad) in single.items():
        for rank in range(2):
            got_value, got_grad = ranks[rank][name]
            assert abs(got_value - value) < 1e-5, (name, got_value, value)
            torch.testing.assert_close(got_grad, grad, atol=1e-5, rtol=1e-4, msg=name)
