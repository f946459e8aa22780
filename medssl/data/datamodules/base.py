"""What every medssl DataModule shares: the cache path, batch size, workers, seed and split names,
the choice of split per stage, and seeded loaders. Subclasses build a :class:`BlockShuffleSampler`
for training, which splits the data across DDP ranks itself (``uses_medssl_sampler``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from medssl.data.transforms import seed_worker
from medssl.data.view_ops import DeviceViews, DrawViewsd, apply_device_views

VIEWS_ON = ("auto", "cpu", "device")  #: where training views can be made

DatasetT = TypeVar("DatasetT", bound=Dataset)


def stage_dataset(datamodule: Any, stage: str) -> Any:
    """The dataset a DataModule serves for a Lightning stage (``fit`` → train), or None when it has none
    or does not keep per-stage ``datasets`` (a :class:`CacheDataModule` does)."""
    datasets = getattr(datamodule, "datasets", None)
    if not isinstance(datasets, dict):
        return None
    return datasets.get({"fit": "train", "validate": "val", "test": "test", "predict": "test"}.get(stage, stage))


def default_workers() -> int:
    """All cores but one for loading, at most 8 (beyond that a loader rarely gains)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class CacheDataModule(pl.LightningDataModule, Generic[DatasetT]):
    """Base of the DataModules over a medssl cache, whose ``setup`` fills ``datasets`` (one per stage,
    None for a stage the cache has no split for) with ``DatasetT``.

    ``views_on``: where training views are made. ``"cpu"``: per sample in the loader workers.
    ``"device"``: the workers only draw each sample's view parameters (from the same (seed, epoch,
    index) keys, so the views are the same as on the CPU, to float rounding); the loader sends the
    pixels as stored (uint8 tiles) in pinned memory, and :meth:`on_after_batch_transfer` makes the views
    of the whole batch on the training device (:mod:`medssl.data.view_ops`). ``"auto"`` (the default):
    device views when the Trainer trains on an accelerator, CPU views on a CPU (where batching gains
    nothing: README "Feeding a GPU").

    ``uses_medssl_sampler``: training loaders carry their own DDP-aware sampler, so Lightning must not
    wrap it in a ``DistributedSampler``; ``medssl fit`` sets ``trainer.use_distributed_sampler=False``
    for every DataModule with this flag.
    """

    uses_medssl_sampler = True

    def __init__(
        self,
        cache: str,
        batch_size: int,
        num_workers: int | None,
        seed: int,
        train_split: str | None,
        val_split: str | None,
        test_split: str | None,
        views_on: str = "auto",
    ):
        super().__init__()
        if views_on not in VIEWS_ON:
            raise ValueError(f"views_on must be one of {', '.join(VIEWS_ON)}, got {views_on!r}")
        self.views_on = views_on
        self.device_views: DeviceViews | None = None
        self.cache = cache
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.seed = seed
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.datasets: dict[str, DatasetT | None] = {}

    def _split(self, stage: str, available: Sequence[str]) -> list[str] | None:
        """The filter for a stage, or None for 'no such set'. Without splits, train takes everything."""
        name = self.splits[stage]
        if name is not None and name in available:
            return [name]
        if stage == "train" and not available:
            return []  # sentinel: no filter
        return None

    def _stage_dataset(self, stage: str) -> DatasetT:
        """The dataset of ``stage``; a clear error before ``setup`` or when the cache has no such split."""
        if stage not in self.datasets:
            raise RuntimeError(f"{type(self).__name__} has no {stage} dataset yet: call setup() first")
        dataset = self.datasets[stage]
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__} has no {stage} dataset: {self.cache} has splits, none named "
                f"{self.splits[stage]!r}; set {stage}_split to one of them"
            )
        return dataset

    def makes_device_views(self) -> bool:
        """Whether training views are made on the device: ``views_on="device"``, or ``"auto"`` under a
        Trainer whose root device is an accelerator."""
        if self.views_on != "auto":
            return self.views_on == "device"
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type != "cpu"

    def training_views(self, views: Any) -> Any:
        """The training dataset's transform for the multi-view transform ``views``: itself for CPU views;
        for device views the parameter drawing half (the other half runs in :meth:`on_after_batch_transfer`)."""
        if not self.makes_device_views() or views is None:
            self.device_views = None
            return views
        if not isinstance(views, DeviceViews):
            raise ValueError(
                f"{type(self).__name__}: {type(views).__name__} views cannot run on the device; use views_on='cpu'"
            )
        self.device_views = views
        return DrawViewsd(views)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device views: the batch's views made where the batch now is (a no-op for CPU views and for
        evaluation batches, which carry no view parameters)."""
        return apply_device_views(self.device_views, batch)

    def val_dataloader(self):
        return self._eval("val")

    def test_dataloader(self):
        return self._eval("test")

    def _eval(self, stage: str):
        """The evaluation loader of ``stage``; none (``[]``) when the cache has no such split."""
        dataset = self.datasets.get(stage)
        return [] if dataset is None else self._eval_loader(dataset)

    def _eval_loader(self, dataset: DatasetT):
        """How this domain serves an evaluation set (in storage order); subclasses say."""
        return self._loader(dataset, train=False)

    def _loader(self, dataset: Dataset, train: bool, **kwargs) -> DataLoader:
        options = dict(
            num_workers=self.num_workers,
            pin_memory=self.makes_device_views() and torch.cuda.is_available(),
            worker_init_fn=seed_worker,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )
        options = {"drop_last": train, **options, **kwargs}  # a subclass may keep a short last batch
        return DataLoader(dataset, batch_size=self.batch_size, **options)
