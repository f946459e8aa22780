"""LightningDataModules over the caches, configured by plain arguments (so LightningCLI builds them
from YAML). Splits come from the manifest's ``split`` column (``train``/``val``/``test``); a cache
without splits trains on everything and has no validation set.

Training loaders use :class:`BlockShuffleSampler` with ``(index, epoch)`` keys (Lightning calls its
``set_epoch``; run with ``Trainer(use_distributed_sampler=False)`` so it is not wrapped again under
DDP), so the order and every sample's random views are a function of (``seed``, epoch, sample) alone:
the same with any number of workers or GPUs, and after resuming from a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from medssl.data.bags import BagPieceDataset, InstanceDataset, SlideBagDataset, collate_bags
from medssl.data.datasets import TileDataset, batch_loader
from medssl.data.geometric_views import GeometricViewsd, histology_geometric_view, radiology_geometric_view
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.transforms import MultiViewd, histology_view, radiology_view, seed_worker
from medssl.data.volumes import VolumePatchDataset, VolumeSliceDataset, VolumeStackDataset


def default_workers() -> int:
    """All cores but one for loading, at most 8 (beyond that a loader rarely gains)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class _CacheDataModule(pl.LightningDataModule):
    def __init__(self, cache: str, batch_size: int, num_workers: int | None, seed: int,
                 train_split: str | None, val_split: str | None, test_split: str | None):
        super().__init__()
        self.cache = cache
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.seed = seed
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.datasets: dict[str, Dataset | None] = {}

    def _split(self, stage: str, available: Sequence[str]) -> list[str] | None:
        """The filter for a stage, or None for 'no such set'. Without splits, train takes everything."""
        name = self.splits[stage]
        if name in available:
            return [name]
        if stage == "train" and not available:
            return []  # sentinel: no filter
        return None

    def _loader(self, dataset: Dataset, train: bool, **kwargs) -> DataLoader:
        options = dict(num_workers=self.num_workers, worker_init_fn=seed_worker,
                       persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(dataset, batch_size=self.batch_size, drop_last=train, **options, **kwargs)


class TileDataModule(_CacheDataModule):
    """Histology tiles for self-supervised pretraining and tile-level evaluation.

    ``views``: ``"pair"`` (two histology views, SimCLR/Barlow Twins), ``"multicrop"`` (``n_global`` crops
    of ``view_size`` and ``n_local`` of 3/7 that size, as 224/96 in SwAV and DINO), ``"geometric"`` (a
    pair whose crop/flip/rotation geometry comes along under ``"geometry"``, for LVM-Med's local cost) or ``None`` (raw uint8 batches read whole, the fast path, e.g. for on-device augmentation).
    Validation and test sets are raw tiles in storage order (for kNN and linear-probe monitors).
    """

    def __init__(self, cache: str, batch_size: int = 256, num_workers: int | None = None, views: str | None = "pair",
                 view_size: int = 224, n_global: int = 2, n_local: int = 6, seed: int = 0,
                 train_split: str | None = "train", val_split: str | None = "val", test_split: str | None = "test"):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split)
        if views not in (None, "pair", "multicrop", "geometric"):
            raise ValueError(f"views must be 'pair', 'multicrop', 'geometric' or None, got {views!r}")
        self.views, self.view_size, self.n_global, self.n_local = views, view_size, n_global, n_local

    def _transform(self):
        if self.views == "pair":
            return MultiViewd([histology_view(self.view_size)] * 2)
        if self.views == "multicrop":
            return MultiViewd.multi_crop(self.n_global, self.n_local, self.view_size, max(16, self.view_size * 3 // 7))
        if self.views == "geometric":
            return GeometricViewsd.pair(histology_geometric_view(self.view_size))
        return None

    def setup(self, stage: str | None = None) -> None:
        everything = TileDataset(self.cache)
        available = sorted({str(everything.cache.metadata(s).get("split", "")) for s in everything.slide_ids} - {""})
        for name in ("train", "val", "test"):
            split = self._split(name, available)
            transform = self._transform() if name == "train" else None
            self.datasets[name] = None if split is None else TileDataset(
                self.cache, splits=split or None, classes=everything.classes, transform=transform, seed=self.seed
            )

    def train_dataloader(self):
        dataset = self.datasets["train"]
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=self.views is not None)
        if self.views is None:
            return batch_loader(dataset, sampler, self.batch_size, num_workers=self.num_workers, drop_last=True,
                                persistent_workers=self.num_workers > 0)
        return self._loader(dataset, train=True, sampler=sampler)

    def val_dataloader(self):
        return self._eval("val")

    def test_dataloader(self):
        return self._eval("test")

    def _eval(self, name: str):
        dataset = self.datasets.get(name)
        if dataset is None:
            return []
        return batch_loader(dataset, SequentialSampler(dataset), self.batch_size, num_workers=self.num_workers)


class VolumeDataModule(_CacheDataModule):
    """Radiology volumes as 2D slices, 3D patches or whole slice stacks (``mode``), resized or
    cropped to ``spatial_size`` (2 entries for slices, 3 for patches; ignored for stacks), with
    ``views`` radiology views per sample for SSL (0 = the sample itself with its label map, for
    segmentation; every volume then needs a label). ``geometric`` slices come as a pair of views with
    their crop/flip geometry (LVM-Med)."""

    def __init__(self, cache: str, mode: str = "slices", spatial_size: Sequence[int] = (224, 224), views: int = 2,
                 batch_size: int = 32, num_workers: int | None = None, seed: int = 0, patches_per_volume: int = 4,
                 stack_depth: int | None = None, geometric: bool = False, train_split: str | None = "train",
                 val_split: str | None = "val", test_split: str | None = "test"):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split)
        if mode not in ("slices", "patches", "stacks"):
            raise ValueError(f"mode must be 'slices', 'patches' or 'stacks', got {mode!r}")
        self.mode, self.spatial_size, self.views = mode, tuple(spatial_size), views
        self.patches_per_volume, self.stack_depth = patches_per_volume, stack_depth
        if geometric and (mode != "slices" or views != 2):
            raise ValueError("geometric views are pairs of 2D slices: use mode='slices' and views=2")
        self.geometric = geometric

    def _dataset(self, splits, transform):
        common = dict(splits=splits or None, transform=transform, labels=self.views == 0, seed=self.seed)
        if self.mode == "slices":
            return VolumeSliceDataset(self.cache, **common)
        if self.mode == "patches":
            return VolumePatchDataset(self.cache, patch_size=self.spatial_size,
                                      patches_per_volume=self.patches_per_volume, **common)
        return VolumeStackDataset(self.cache, depth=self.stack_depth, **common)

    def _transform(self, train: bool):
        if self.mode == "stacks":
            return None
        if train and self.geometric:
            return GeometricViewsd.pair(radiology_geometric_view(self.spatial_size))
        if train and self.views:
            return MultiViewd([radiology_view(self.spatial_size, keys=("image",))] * self.views)
        from monai.transforms import ResizeWithPadOrCropd

        keys = ["image", "label"] if self.mode != "stacks" else ["image"]
        return ResizeWithPadOrCropd(keys, self.spatial_size, allow_missing_keys=True)

    def setup(self, stage: str | None = None) -> None:
        from medssl.cache import VolumeCache

        cache = VolumeCache(self.cache)
        available = sorted({str(cache.metadata(v).get("split", "")) for v in cache.ids} - {""})
        for name in ("train", "val", "test"):
            split = self._split(name, available)
            self.datasets[name] = None if split is None else self._dataset(split, self._transform(name == "train"))

    def train_dataloader(self):
        dataset = self.datasets["train"]
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=True)
        return self._loader(dataset, train=True, sampler=sampler)

    def val_dataloader(self):
        return [] if self.datasets.get("val") is None else self._loader(self.datasets["val"], train=False)

    def test_dataloader(self):
        return [] if self.datasets.get("test") is None else self._loader(self.datasets["test"], train=False)


class BagDataModule(_CacheDataModule):
    """Slides as bags (``features`` from ``medssl embed``, or tile pixels) for slide-level learning.

    Training yields padded batches of bags (at most ``max_instances`` random instances each, a function
    of (``seed``, epoch, slide)); validation and test yield whole bags in pieces of ``piece_size``
    instances (:class:`~medssl.data.bags.BagPieceDataset`), so a bag of any size is scored in bounded
    memory. ``classes`` fixes the label order, negative first (default: sorted labels).
    ``instance_masks`` names a folder of lesion masks (:class:`~medssl.data.truth.LesionMasks`) that
    evaluation alone reads, for instance AUROC; training batches never carry instance truth."""

    def __init__(self, cache: str, features: str | None = None, batch_size: int = 1, max_instances: int | None = 8192,
                 piece_size: int = 8192, classes: list[str] | None = None, instance_masks: str | None = None,
                 num_workers: int | None = None, seed: int = 0, train_split: str | None = "train",
                 val_split: str | None = "val", test_split: str | None = "test"):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split)
        self.features, self.max_instances, self.piece_size = features, max_instances, piece_size
        self.classes, self.instance_masks = classes, instance_masks

    def setup(self, stage: str | None = None) -> None:
        from medssl.data.truth import LesionMasks

        everything = SlideBagDataset(self.cache, features=self.features, classes=self.classes)
        self.classes = everything.classes
        meta = everything.tiles.cache
        available = sorted({str(meta.metadata(s).get("split", "")) for s in everything.slide_ids} - {""})
        truth = LesionMasks(self.instance_masks) if self.instance_masks else None
        for name in ("train", "val", "test"):
            split = self._split(name, available)
            if split is None:
                self.datasets[name] = None
            elif name == "train":
                self.datasets[name] = self._train_dataset(split or None)
            else:
                bags = SlideBagDataset(self.cache, features=self.features, splits=split or None, classes=self.classes)
                self.datasets[name] = BagPieceDataset(bags, self.piece_size, instance_truth=truth)

    def _train_dataset(self, splits: list[str] | None) -> Dataset:
        return SlideBagDataset(self.cache, features=self.features, max_instances=self.max_instances, splits=splits,
                               classes=self.classes, seed=self.seed)

    def train_dataloader(self):
        dataset = self.datasets["train"]
        sampler = BlockShuffleSampler([(i, i + 1) for i in range(len(dataset))], seed=self.seed, with_epoch=True)
        return self._loader(dataset, train=True, sampler=sampler, collate_fn=collate_bags)

    def _pieces(self, name: str):
        dataset = self.datasets.get(name)
        if dataset is None:
            return []
        options = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        return DataLoader(dataset, batch_size=None, shuffle=False, **options)

    def val_dataloader(self):
        return self._pieces("val")

    def test_dataloader(self):
        return self._pieces("test")

    def predict_dataloader(self):
        return self._pieces("test")


class InstanceDataModule(BagDataModule):
    """Training on single instances with their slide's label (instance classifiers such as INS);
    validation and test on whole bags as in :class:`BagDataModule`. Embeddings (``features``) or tile
    pixels, which get two histology views of ``view_size``."""

    def __init__(self, cache: str, features: str | None = None, batch_size: int = 64, view_size: int = 224,
                 piece_size: int = 8192, classes: list[str] | None = None, instance_masks: str | None = None,
                 num_workers: int | None = None, seed: int = 0, train_split: str | None = "train",
                 val_split: str | None = "val", test_split: str | None = "test"):
        super().__init__(cache, features, batch_size, None, piece_size, classes, instance_masks, num_workers, seed,
                         train_split, val_split, test_split)
        self.view_size = view_size

    def _train_dataset(self, splits: list[str] | None) -> Dataset:
        transform = None if self.features else MultiViewd([histology_view(self.view_size)] * 2)
        return InstanceDataset(self.cache, features=self.features, transform=transform, splits=splits,
                               classes=self.classes, seed=self.seed)

    def train_dataloader(self):
        dataset = self.datasets["train"]
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=True)
        return self._loader(dataset, train=True, sampler=sampler)
