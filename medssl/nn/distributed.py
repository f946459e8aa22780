"""Collective helpers that are the identity on one process, so losses read the same everywhere."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping gradients.

    The backward pass sums each rank's gradient into the slice it contributed; with DDP's gradient
    averaging that reproduces the single-process gradient of the mean loss over the global batch.
    """
    if world_size() == 1:
        return tensor
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # its replacement is still a private API in torch 2.13
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(tensor.contiguous()), dim=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks without gradient (for statistics such as Sinkhorn marginals or centres)."""
    return _all_reduce(tensor, "SUM")


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks without gradient."""
    return _all_reduce(tensor, "MAX")


def _all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    if world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor
