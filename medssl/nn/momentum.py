"""Momentum machinery shared by MoCo-, BYOL-, DINO- and INS-style methods: an EMA teacher update and a
FIFO queue of keys, both kept in module state so checkpoints resume them exactly."""

from __future__ import annotations

import torch
from torch import nn

from medssl.nn.distributed import gather


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m θ_t + (1 - m) θ_s`` for parameters; floating buffers (BatchNorm statistics) likewise."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
        else:
            t.copy_(s)


class MomentumQueue(nn.Module):
    """A FIFO memory of ``size`` key vectors (and optional integer labels), filled from the global batch."""

    keys: torch.Tensor
    labels: torch.Tensor
    pointer: torch.Tensor
    filled: torch.Tensor

    def __init__(self, size: int, dim: int, with_labels: bool = False):
        super().__init__()
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long) if with_labels else torch.zeros(0))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor, labels: torch.Tensor | None = None, gather_distributed: bool = True) -> None:
        if gather_distributed:
            keys = gather(keys.detach())
            labels = gather(labels) if labels is not None else None
        size = self.keys.shape[0]
        keys = keys[-size:]
        positions = (self.pointer + torch.arange(len(keys), device=keys.device)) % size
        self.keys[positions] = keys.to(self.keys.dtype)
        if labels is not None and self.labels.numel():
            self.labels[positions] = labels[-size:].long()
        self.pointer.copy_((self.pointer + len(keys)) % size)
        self.filled.copy_(torch.clamp(self.filled + len(keys), max=size))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys (and labels) pushed so far, oldest first once the queue has wrapped."""
        n = int(self.filled)
        order = (
            torch.arange(n, device=self.keys.device) + (int(self.pointer) if n == self.keys.shape[0] else 0)
        ) % self.keys.shape[0]
        labels = self.labels[order] if self.labels.numel() else self.labels
        return self.keys[order], labels
