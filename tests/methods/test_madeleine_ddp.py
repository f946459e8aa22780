"""Two CPU processes (gloo) give MADELEINE's loss and gradients of one process on the global batch: the
InfoNCE over gathered slide embeddings, GOT averaged over the global count of cases, with the cases that
have each stain spread unevenly over the ranks (and one stain present on one rank only)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.ddp import on_two_processes
from tests.methods.test_madeleine import small, stain_batch

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*", "ignore:.*self.log.*")
B = 6


def global_batch() -> dict:
    batch = stain_batch(cases=B, tokens=10, seed=3)
    batch["present"][0, 1] = batch["present"][1, 1] = False  # ER: one case on rank 0, three on rank 1
    batch["present"][3:, 2] = False  # PR: rank 0 only
    return batch


def run(batch: dict) -> tuple[float, torch.Tensor]:
    model = small(got_tokens=1000, intra_weight=0.5, temperature=0.2)
    torch.manual_seed(7)  # the intra-stain half views draw one permutation, the same on every rank
    terms, _ = model.alignment_losses(batch)
    terms["loss"].backward()
    return float(terms["loss"].detach()), torch.cat(
        [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    )


def _worker(rank: int) -> tuple[float, torch.Tensor]:
    torch.set_num_threads(1)
    batch = global_batch()
    half = slice(rank * B // 2, (rank + 1) * B // 2)
    loss, grads = run({"tokens": batch["tokens"][half], "present": batch["present"][half], "stains": batch["stains"]})
    reduced = torch.tensor([loss])
    dist.all_reduce(reduced)
    dist.all_reduce(grads)  # what DDP does with parameter gradients: sum, then / world size
    return float(reduced) / 2, grads / 2


def test_two_processes_equal_one_process_on_the_global_batch():
    loss, grads = run(global_batch())
    for got_loss, got_grads in on_two_processes(_worker).values():
        assert got_loss == pytest.approx(loss, rel=1e-5)
        torch.testing.assert_close(got_grads, grads, rtol=1e-4, atol=1e-6)
