"""A training-order sampler that keeps reads local and is correct under DDP.

Random order over millions of tiles scatters reads over the whole cache. Block shuffling keeps most of
the randomness at a fraction of the cost: the order of storage blocks (chunks) is shuffled, then
samples are shuffled inside a sliding window of a few blocks, so a batch touches a handful of chunks.

Per epoch the sequence is a function of (seed, epoch) only, computed identically on every rank; rank
``r`` takes the ``r``-th contiguous part. So ranks are disjoint, together cover every sample once
(``pad=False``) or with at most ``world_size - 1`` repeats to give equal lengths (``pad=True``, as
``DistributedSampler`` does, so no rank waits at the end of an epoch), the order changes with
``set_epoch`` (Lightning calls it on samplers every epoch) and is reproducible. Use it with
``Trainer(use_distributed_sampler=False)`` so Lightning does not wrap it in a second sampler.
With ``with_epoch=True`` it yields ``(index, epoch)`` keys, from which datasets seed each sample's
augmentations (:mod:`medssl.data.seeding`), so views too are a function of (seed, epoch, sample).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class BlockShuffleSampler(Sampler[int]):
    """Indices in block-shuffled order for one DDP rank.

    ``blocks`` are ``(start, stop)`` index ranges that are cheap to read together (a dataset's
    ``blocks()``). ``window_blocks`` sets how many blocks are mixed at a time. ``rank`` and
    ``world_size`` default to the initialised process group, or (0, 1).
    """

    def __init__(
        self,
        blocks: Sequence[tuple[int, int]],
        shuffle: bool = True,
        seed: int = 0,
        window_blocks: int = 8,
        rank: int | None = None,
        world_size: int | None = None,
        pad: bool = True,
        with_epoch: bool = False,
    ):
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.blocks = [(int(a), int(b)) for a, b in blocks if b > a]
        self.shuffle, self.seed, self.window_blocks = shuffle, seed, max(1, window_blocks)
        self.rank, self.world_size, self.pad, self.with_epoch = rank, world_size, pad, with_epoch
        self.epoch = 0
        self.total = sum(b - a for a, b in self.blocks)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self) -> np.ndarray:
        """The whole epoch's sequence, before it is split across ranks."""
        if not self.blocks:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
        sequence = np.concatenate([np.arange(*self.blocks[k], dtype=np.int64) for k in order])
        if self.shuffle:
            mean_block = self.total / len(self.blocks)
            window = max(1, int(round(self.window_blocks * mean_block)))
            for start in range(0, len(sequence), window):
                part = sequence[start : start + window]
                sequence[start : start + window] = part[rng.permutation(len(part))]
        return sequence

    def _part(self) -> np.ndarray:
        sequence = self.epoch_order()
        if self.pad:
            per_rank = -(-len(sequence) // self.world_size)
            sequence = np.resize(sequence, per_rank * self.world_size)  # repeats from the start
            return sequence[self.rank * per_rank : (self.rank + 1) * per_rank]
        return np.array_split(sequence, self.world_size)[self.rank]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices = self._part().tolist()
        return iter([(i, self.epoch) for i in indices] if self.with_epoch else indices)

    def __len__(self) -> int:
        if self.pad:
            return -(-self.total // self.world_size)
        base, rest = divmod(self.total, self.world_size)
        return base + (1 if self.rank < rest else 0)
