"""What every device-views test checks: the loader's draw + the device's batched apply give the views the
per-sample CPU path gives from the same (seed, epoch, index) keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import default_collate

from medssl.data.seeding import seeded
from medssl.data.view_ops import DeviceViews, DrawViewsd


def both_ways(views: DeviceViews, samples: Sequence[dict], seed: int = 0, epoch: int = 0) -> tuple[dict, dict]:
    """(the collated CPU-path batch, the device-path batch) of ``samples``, each drawn under
    ``seeded(seed, epoch, index)`` as a medssl dataset draws them."""
    cpu, drawn = [], []
    for index, sample in enumerate(samples):
        with seeded(views, seed, epoch, index):
            cpu.append(views(dict(sample)))  # type: ignore[operator]
        with seeded(views, seed, epoch, index):
            drawn.append(DrawViewsd(views)(dict(sample)))
    return default_collate(cpu), views.apply_batch(default_collate(drawn))


def assert_same_views(cpu: dict, device: dict, key: str = "views", atol: float = 1e-5) -> None:
    """Every view of the device batch equals the CPU path's, to float rounding."""
    assert len(cpu[key]) == len(device[key])
    for a, b in zip(cpu[key], device[key], strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(b, a, atol=atol, rtol=0)


def first_training_batch(datamodule, epoch: int = 0) -> tuple[dict, dict]:
    """(what a DataModule's training loader sends first in ``epoch``, that batch after the DataModule's
    ``on_after_batch_transfer``, i.e. with its views)."""
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)
    sent = next(iter(loader))
    return sent, datamodule.on_after_batch_transfer(sent, 0)
