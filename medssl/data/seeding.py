"""Views as a function of (seed, epoch, sample): the same augmentations whatever the number of
DataLoader workers or GPUs, and after resuming from a checkpoint.

A sampler that knows the epoch (``BlockShuffleSampler(with_epoch=True)``) yields ``(index, epoch)``
keys; datasets then draw every random number for that sample inside :func:`seeded`, which seeds
torch's global generator (restored afterwards) and every MONAI ``Randomizable`` in the transform.
Plain integer keys keep the usual per-worker random streams (see ``seed_worker``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

Key = int | tuple[int, int]


def split_key(key: Key) -> tuple[int, int | None]:
    """``(index, epoch)`` of a sampler key; ``epoch`` is None for a plain index."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed per (seed, epoch, sample) (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(transform, seed: int, epoch: int | None, index: int) -> Iterator[None]:
    """Run the body with random draws fixed by (seed, epoch, index); a no-op when ``epoch`` is None."""
    if epoch is None:
        yield
        return
    from monai.data.utils import set_rnd

    value = sample_seed(seed, epoch, index)
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only, the one fork_rng restores: torch.manual_seed would also seed (and, before
        # CUDA starts, queue with a formatted stack trace) every accelerator's, ~0.3 ms per sample
        torch.default_generator.manual_seed(value)
        if transform is not None:
            set_rnd(transform, value)
        yield
