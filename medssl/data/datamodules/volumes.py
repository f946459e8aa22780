"""CT/MR volumes from ``medssl cache-volumes`` as 2D slices, 3D patches or whole slice stacks."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from medssl.data.datamodules.base import CacheDataModule
from medssl.data.geometric_views import GeometricViewsd, radiology_geometric_view
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.transforms import radiology_views
from medssl.data.volumes import VolumePairDataset, VolumePatchDataset, VolumeSliceDataset, VolumeStackDataset

CORRESPONDENCES = ("same_volume", "body_coordinates", "embeddings")  # the pair samplers of mode="pairs"
# the dataset of each stage, by mode
VolumeDataset = VolumeSliceDataset | VolumePatchDataset | VolumeStackDataset | VolumePairDataset


class VolumeDataModule(CacheDataModule[VolumeDataset]):
    """Radiology volumes as 2D slices, 3D patches or slice stacks (``mode``), resized or cropped to
    ``spatial_size`` (2 entries for slices, 3 for patches and stacks), with ``views`` radiology views
    per sample for SSL (0 = the sample itself with its label map, for segmentation; every volume then
    needs a label). ``geometric`` slices come as a pair of views with their crop/flip geometry (LVM-Med).

    Stacks (the joint 2D/3D method): training reads ``stack_depth`` consecutive slices (None = the whole
    volume; bounds memory), cuts one random ``spatial_size`` (D, H, W) window and makes ``views`` views of
    it, each with a disjoint random subset of ``transforms_per_view`` transforms from ``view_transforms``
    (None = all of :data:`~medssl.data.volume_views.VOLUME_VIEW_TRANSFORMS`); see
    :class:`~medssl.data.volume_views.VolumeViewsd`. Evaluation stacks are padded or centre-cropped to
    ``spatial_size`` so they batch.

    Pairs (Alice): training yields two ``spatial_size`` crops per volume showing the same anatomy and
    their corresponding points, from the ``correspondence`` sampler (``same_volume``: two overlapping
    crops of one volume; ``body_coordinates``: the same relative body position in another patient;
    ``embeddings``: the voxel of another patient whose stored dense embedding matches, from the store
    ``embeddings`` (a ``medssl embed --dense`` folder holding every volume); see
    :mod:`medssl.data.correspondence`); evaluation serves whole volumes as centre-cropped stacks.

    ``views_on``: ``"auto"``, ``"cpu"`` or ``"device"`` (see :class:`~medssl.data.datamodules.base.CacheDataModule`);
    slices and patches with views, geometric or not, run either way. Slices of different sizes travel
    to the device zero-padded at the end to the largest of their batch (geometric views crop from the
    slice itself; other views pad or crop it to ``spatial_size`` first). Stacks and pairs too: the loader
    cuts a stack's window and draws its views (:class:`~medssl.data.volume_views.VolumeViewsd`), or sends a
    pair's crops as cut, and the device makes the views or flips and turns the crops
    (:class:`~medssl.data.correspondence.PairViews`)."""

    def __init__(
        self,
        cache: str,
        mode: str = "slices",
        spatial_size: Sequence[int] = (224, 224),
        views: int = 2,
        batch_size: int = 32,
        num_workers: int | None = None,
        seed: int = 0,
        patches_per_volume: int = 4,
        stack_depth: int | None = None,
        transforms_per_view: int = 2,
        view_transforms: Sequence[str] | None = None,
        geometric: bool = False,
        correspondence: str = "same_volume",
        embeddings: str | None = None,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        views_on: str = "auto",
    ):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split, views_on)
        if mode not in ("slices", "patches", "stacks", "pairs"):
            raise ValueError(f"mode must be 'slices', 'patches', 'stacks' or 'pairs', got {mode!r}")
        if correspondence not in CORRESPONDENCES:
            raise ValueError(f"correspondence must be one of {', '.join(CORRESPONDENCES)}, got {correspondence!r}")
        if (correspondence == "embeddings") != (embeddings is not None):
            raise ValueError(
                "correspondence 'embeddings' needs embeddings: <a medssl embed --dense folder>, and only it takes one"
            )
        self.correspondence, self.embeddings = correspondence, embeddings
        self.mode, self.spatial_size, self.views = mode, tuple(spatial_size), views
        self.patches_per_volume, self.stack_depth = patches_per_volume, stack_depth
        if mode in ("stacks", "pairs") and len(self.spatial_size) != 3:
            raise ValueError(f"{mode} need a 3-entry spatial_size (D, H, W), got {list(spatial_size)}")
        self.transforms_per_view = transforms_per_view
        self.view_transforms = None if view_transforms is None else list(view_transforms)
        if geometric and (mode != "slices" or views != 2):
            raise ValueError("geometric views are pairs of 2D slices: use mode='slices' and views=2")
        self.geometric = geometric
        if mode == "stacks" and views:
            self._transform(train=True)  # a bad transform list fails here, not at setup

    def _dataset(self, splits, transform, train: bool = False) -> VolumeDataset:
        common = dict(splits=splits or None, transform=transform, labels=self.views == 0, seed=self.seed)
        if self.mode == "slices":
            return VolumeSliceDataset(self.cache, **common)
        if self.mode == "patches":
            return VolumePatchDataset(
                self.cache, patch_size=self.spatial_size, patches_per_volume=self.patches_per_volume, **common
            )
        if self.mode == "pairs" and train:  # corresponding crops
            return self._pairs(common)
        return VolumeStackDataset(self.cache, depth=self.stack_depth, **common)

    def _pairs(self, common: dict) -> VolumePairDataset:
        from medssl.data.correspondence import BodyCoordinateSampler, EmbeddingSampler, SameVolumeSampler

        if self.correspondence == "embeddings":
            assert self.embeddings is not None  # __init__ requires it
            sampler = EmbeddingSampler(self.embeddings, crop_size=self.spatial_size)
            dataset = VolumePairDataset(self.cache, sampler=sampler, **common)
            sampler.require(dataset.volume_ids)  # a store without some volume fails here, naming them
            return dataset
        kind = SameVolumeSampler if self.correspondence == "same_volume" else BodyCoordinateSampler
        return VolumePairDataset(self.cache, sampler=kind(crop_size=self.spatial_size), **common)

    def _transform(self, train: bool):
        if train and self.mode == "pairs":
            from medssl.data.correspondence import PairViews

            return PairViews()  # the correspondence sampler crops and draws the flips and turns
        if train and self.geometric:
            return GeometricViewsd.pair(radiology_geometric_view(self.spatial_size))
        if train and self.views and self.mode == "stacks":
            from medssl.data.volume_views import VolumeViewsd

            return VolumeViewsd(
                self.spatial_size,
                self.transforms_per_view,
                self.view_transforms,
                views=self.views,
                dtype=self._transport_dtype(),
            )
        if train and self.views:
            return radiology_views(self.spatial_size, self.views, dtype=self._transport_dtype())
        from monai.transforms.croppad.dictionary import ResizeWithPadOrCropd

        return ResizeWithPadOrCropd(["image", "label"], self.spatial_size, allow_missing_keys=True)

    def _transport_dtype(self) -> torch.dtype | None:
        """float16 for device views of a float16 cache: the loader sends the stored values exactly in
        half the bytes (the views are made in float32 on the device); None (float32) otherwise."""
        from medssl.cache import VolumeCache

        if not self.makes_device_views():
            return None
        cache = VolumeCache(self.cache)
        stored = {np.dtype(cache.image(v).dtype) for v in cache.ids}
        return torch.float16 if stored == {np.dtype(np.float16)} else None

    def setup(self, stage: str | None = None) -> None:
        from medssl.cache import VolumeCache

        cache = VolumeCache(self.cache)
        available = sorted({str(cache.metadata(v).get("split", "")) for v in cache.ids} - {""})
        for name in ("train", "val", "test"):
            split = self._split(name, available)
            if split is None:
                self.datasets[name] = None
                continue
            transform = self._transform(name == "train")
            train = name == "train"
            self.datasets[name] = self._dataset(split, self.training_views(transform) if train else transform, train)

    def train_dataloader(self):
        dataset = self._stage_dataset("train")
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=True)
        padded = {}
        if self.geometric and self.makes_device_views():
            padded["collate_fn"] = functools.partial(collate_padded, dtype=self._transport_dtype())
        return self._loader(dataset, train=True, sampler=sampler, **padded)


def collate_padded(samples: list[dict], key: str = "image", dtype: torch.dtype | None = None) -> dict:
    """``default_collate`` after zero-padding each sample's ``key`` at the end of every spatial axis to the
    largest in the batch (and casting it to ``dtype``, if given): how slices of different sizes travel to
    the device for geometric device views, whose geometry records each slice's own size (see
    :func:`~medssl.data.geometric_views.on_canvas`)."""
    from torch.nn.functional import pad
    from torch.utils.data import default_collate

    canvas = [max(sizes) for sizes in zip(*(s[key].shape[1:] for s in samples), strict=True)]
    padded = []
    for sample in samples:
        missing = [want - have for have, want in zip(sample[key].shape[1:], canvas, strict=True)]
        widths = [w for amount in reversed(missing) for w in (0, amount)]  # F.pad lists the last axis first
        image = pad(sample[key], widths) if any(widths) else sample[key]
        padded.append({**sample, key: image if dtype is None else image.to(dtype)})
    return default_collate(padded)
