"""Two CPU processes (gloo) give the joint 2D/3D losses and gradients of one process on the global batch,
Sinkhorn over the global batch and the DeepCluster-v2 memory bank and k-means included. BatchNorm runs
on running statistics (eval mode) and dropout is off: per-rank batch statistics are what SyncBatchNorm
exists for, not what this test is about."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from medssl.methods.joint_2d3d import JointIntraInter
from tests.ddp import on_two_processes
from tests.methods.test_joint_2d3d import small

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*", "ignore:.*self.log.*")
B, N = 4, 4


def model_and_batch() -> tuple[JointIntraInter, dict]:
    model = small(inter_clustering="deepcluster", inter_clusters=[2, 3], w_mask=0.0, freeze_prototypes_steps=0).eval()
    model._build_memories(volumes=B, slices=N)
    generator = torch.Generator().manual_seed(1)
    batch = {"views": [torch.rand(B, 1, N, 16, 16, generator=generator) for _ in range(2)], "index": torch.arange(B)}
    return model, batch


def run(model: JointIntraInter, batch: dict) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Fill the bank with this process's samples, merge, cluster, then one loss and its gradients."""
    memory = model.memory("inter")
    with torch.no_grad():
        tokens = [model.slice_embeddings(v) for v in batch["views"]]
        memory.store(batch["index"], [model.stack.volume_embedding(model.f_inter(x)) for x in tokens])
    memory.synchronise()
    memory.cluster(seed=0)
    loss = model.training_step(batch, 0)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), grads, memory.assignments.clone()


def _worker(rank: int) -> tuple:
    torch.set_num_threads(1)
    model, batch = model_and_batch()
    half = slice(rank * B // 2, (rank + 1) * B // 2)
    loss, grads, assignments = run(model, {"views": [v[half] for v in batch["views"]], "index": batch["index"][half]})
    reduced = torch.tensor([loss])
    dist.all_reduce(reduced)
    dist.all_reduce(grads)  # what DDP does with parameter gradients: sum, then / world size
    return float(reduced) / 2, grads / 2, assignments


def test_two_processes_equal_one_process_on_the_global_batch():
    loss, grads, assignments = run(*model_and_batch())
    assert (assignments >= 0).all()  # every volume has a pseudo-label in every head
    ranks = on_two_processes(_worker)
    for rank in range(2):
        got_loss, got_grads, got_assignments = ranks[rank]
        assert torch.equal(got_assignments, assignments)
        assert got_loss == pytest.approx(loss, rel=1e-5)
        torch.testing.assert_close(got_grads, grads, atol=1e-6, rtol=1e-4)
