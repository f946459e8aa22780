"""Datasets, samplers and transforms that feed training from the medssl caches.

The DataModules (:mod:`medssl.data.datamodules`) are exported here too, under the short class paths
that configs use (``medssl.data.TileDataModule``). They are imported on first use, so importing
another part of ``medssl.data`` does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medssl.data.datamodules import (
        BagDataModule,
        CacheDataModule,
        ClassificationDataModule,
        InstanceDataModule,
        SegmentationDataModule,
        StacksAndImagesDataModule,
        StainSetDataModule,
        TileDataModule,
        VolumeDataModule,
    )

__all__ = [
    "BagDataModule",
    "CacheDataModule",
    "ClassificationDataModule",
    "InstanceDataModule",
    "SegmentationDataModule",
    "StacksAndImagesDataModule",
    "StainSetDataModule",
    "TileDataModule",
    "VolumeDataModule",
]


def __getattr__(name: str):
    if name in __all__:
        from medssl.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
