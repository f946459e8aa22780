"""Slice stacks and 2D images side by side: the joint 2D/3D method pretrains its 2D encoder on the slices
of volumes and, as the paper's 2D stage does, on 2D images from other sources (slices of other caches,
grey tiles) too."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import CombinedLoader

from medssl.data.datamodules.base import CacheDataModule
from medssl.data.datamodules.volumes import VolumeDataModule


class StacksAndImagesDataModule(pl.LightningDataModule):
    """Training batches ``{"volumes": <a stacks batch>, "images": <a two-view 2D batch>}``, the shorter
    loader cycled until the longer one ends (Lightning's ``max_size_cycle``); validation and testing are
    the volumes'. ``volumes`` is a :class:`VolumeDataModule` with ``mode="stacks"``; ``images`` any medssl
    DataModule with two 2D views per sample and the encoder's channels (a ``VolumeDataModule`` of slices,
    or a ``TileDataModule`` of grey tiles). In YAML both are ``class_path`` + ``init_args`` blocks."""

    uses_medssl_sampler = True  # both loaders shard across DDP ranks with their own samplers

    def __init__(self, volumes: VolumeDataModule, images: CacheDataModule):
        super().__init__()
        if volumes.mode != "stacks":
            raise ValueError(f"volumes must serve slice stacks (mode='stacks'), not {volumes.mode!r}")
        self.volumes, self.images = volumes, images

    @property
    def datasets(self) -> dict:
        """The volumes' datasets: what a model sizes per-sample state from."""
        return self.volumes.datasets

    @property
    def batch_size(self) -> int:
        """The volumes' per-device batch (what ``lr_scaling`` reads)."""
        return self.volumes.batch_size

    @property
    def cache(self) -> str:
        return self.volumes.cache

    def setup(self, stage: str) -> None:
        for part in (self.volumes, self.images):  # the parts' views_on="auto" reads the Trainer
            part.trainer = self.trainer
        self.volumes.setup(stage)
        self.images.setup(stage)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Each part's device views (see :meth:`CacheDataModule.on_after_batch_transfer`)."""
        if isinstance(batch, dict) and set(batch) == {"volumes", "images"}:
            return {
                "volumes": self.volumes.on_after_batch_transfer(batch["volumes"], dataloader_idx),
                "images": self.images.on_after_batch_transfer(batch["images"], dataloader_idx),
            }
        return self.volumes.on_after_batch_transfer(batch, dataloader_idx)

    def train_dataloader(self):
        loaders = {"volumes": self.volumes.train_dataloader(), "images": self.images.train_dataloader()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self):
        return self.volumes.val_dataloader()

    def test_dataloader(self):
        return self.volumes.test_dataloader()
