"""LightningDataModules over the caches, configured by plain arguments (so LightningCLI builds them
from YAML). Splits come from the manifest's ``split`` column (``train``/``val``/``test``); a cache
without splits trains on everything and has no validation set.

Training loaders use :class:`BlockShuffleSampler` with ``(index, epoch)`` keys (Lightning calls its
``set_epoch``; run with ``Trainer(use_distributed_sampler=False)`` so it is not wrapped again under
DDP, which ``medssl fit`` enforces for every :class:`CacheDataModule`), so the order and every
sample's random views are a function of (``seed``, epoch, sample) alone: the same with any number of
workers or GPUs, and after resuming from a checkpoint.

One module per domain: :mod:`.tiles` (histology tiles), :mod:`.volumes` (CT/MR volumes) and
:mod:`.bags` (slides as bags, and their instances) for pretraining and MIL; :mod:`.classification`
and :mod:`.segmentation` (labelled samples, split by case) for fine-tuning; :mod:`.base` holds what
they share. Configs name
them by their short path, e.g. ``medssl.data.TileDataModule``.
"""

from medssl.data.datamodules.bags import BagDataModule, InstanceDataModule, StainSetDataModule
from medssl.data.datamodules.base import CacheDataModule, default_workers
from medssl.data.datamodules.classification import ClassificationDataModule
from medssl.data.datamodules.segmentation import SegmentationDataModule
from medssl.data.datamodules.stacks_and_images import StacksAndImagesDataModule
from medssl.data.datamodules.tiles import TileDataModule
from medssl.data.datamodules.volumes import VolumeDataModule

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
    "default_workers",
]
