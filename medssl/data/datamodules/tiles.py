"""Histology tiles from ``medssl tile``: views for self-supervised pretraining, raw tiles for evaluation."""

from __future__ import annotations

from torch.utils.data import SequentialSampler

from medssl.data.datamodules.base import CacheDataModule
from medssl.data.datasets import TileDataset, batch_loader
from medssl.data.geometric_views import GeometricViewsd, histology_geometric_view
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.transforms import MultiViewd, histology_view


class TileDataModule(CacheDataModule[TileDataset]):
    """Histology tiles for self-supervised pretraining and tile-level evaluation.

    ``views``: ``"pair"`` (two histology views, SimCLR/Barlow Twins), ``"multicrop"`` (``n_global`` crops
    of ``view_size`` and ``n_local`` of 3/7 that size, as 224/96 in SwAV and DINO), ``"geometric"`` (a
    pair whose crop/flip/rotation geometry comes along under ``"geometry"``, for LVM-Med's local cost) or
    ``None`` (raw uint8 batches read whole, the fast path, e.g. for on-device augmentation).
    ``grey_prob`` / ``solarize_prob``: how often a view is turned grey / solarised (off by default).
    Validation and test sets are raw tiles in storage order (for kNN and linear-probe monitors).
    ``views_on``: ``"auto"``, ``"cpu"`` or ``"device"`` (see :class:`~medssl.data.datamodules.base.CacheDataModule`).
    """

    def __init__(
        self,
        cache: str,
        batch_size: int = 256,
        num_workers: int | None = None,
        views: str | None = "pair",
        view_size: int = 224,
        n_global: int = 2,
        n_local: int = 6,
        seed: int = 0,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        views_on: str = "auto",
        grey_prob: float = 0.0,
        solarize_prob: float = 0.0,
    ):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split, views_on)
        if views not in (None, "pair", "multicrop", "geometric"):
            raise ValueError(f"views must be 'pair', 'multicrop', 'geometric' or None, got {views!r}")
        self.views, self.view_size, self.n_global, self.n_local = views, view_size, n_global, n_local
        self.colour = {"grey_prob": grey_prob, "solarize_prob": solarize_prob}

    def _transform(self):
        if self.views == "pair":
            return MultiViewd([histology_view(self.view_size, **self.colour)] * 2)
        if self.views == "multicrop":
            local_size = max(16, self.view_size * 3 // 7)
            return MultiViewd.multi_crop(self.n_global, self.n_local, self.view_size, local_size, **self.colour)
        if self.views == "geometric":
            return GeometricViewsd.pair(histology_geometric_view(self.view_size, **self.colour))
        return None

    def setup(self, stage: str | None = None) -> None:
        everything = TileDataset(self.cache)
        available = sorted({str(everything.cache.metadata(s).get("split", "")) for s in everything.slide_ids} - {""})
        for name in ("train", "val", "test"):
            split = self._split(name, available)
            transform = self.training_views(self._transform()) if name == "train" else None
            self.datasets[name] = (
                None
                if split is None
                else TileDataset(
                    self.cache, splits=split or None, classes=everything.classes, transform=transform, seed=self.seed
                )
            )

    def train_dataloader(self):
        dataset = self._stage_dataset("train")
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=self.views is not None)
        if self.views is None:
            return batch_loader(
                dataset,
                sampler,
                self.batch_size,
                num_workers=self.num_workers,
                drop_last=True,
                persistent_workers=self.num_workers > 0,
            )
        return self._loader(dataset, train=True, sampler=sampler)

    def _eval_loader(self, dataset: TileDataset):
        return batch_loader(dataset, SequentialSampler(dataset), self.batch_size, num_workers=self.num_workers)
