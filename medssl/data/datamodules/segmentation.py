"""Labelled volumes for segmentation: 2D slices or 3D patches to train on, whole volumes to evaluate.

Splits are by case: a volume cache's ``split`` column (from the ``cache-volumes`` manifest) when it has
one, else a seeded case-level split (:func:`~medssl.data.splits.stratified_case_split`, one class: the
cases are simply dealt). ``label_fraction`` keeps a seeded share of the *training cases*
(:func:`~medssl.data.splits.label_fraction`; nested across fractions for one seed), the label-efficiency
protocol. Validation and test volumes come whole, one per step, to every DDP rank (the evaluation
convention), so each case is scored on its 3D volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from medssl.data.datamodules.base import CacheDataModule
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.splits import label_fraction as fraction_of_cases
from medssl.data.splits import stratified_case_split
from medssl.data.transforms import seed_worker
from medssl.data.volumes import VolumePatchDataset, VolumeSliceDataset, VolumeStackDataset
from medssl.errors import InputError

SegmentationDataset = VolumeSliceDataset | VolumePatchDataset | VolumeStackDataset


class PadRandomCrop:
    """Zero-pad ``image`` and ``label`` ``[C, *spatial]`` up to ``size``, then crop both at one random
    position (torch's generator, which :func:`~medssl.data.seeding.seeded` fixes per sample). A plain
    function of tensors: MONAI's dictionary crops cost ~10 ms a slice in MetaTensor bookkeeping."""

    def __init__(self, size: Sequence[int]):
        self.size = tuple(int(s) for s in size)

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        spatial = image.shape[1:]
        pad = [max(0, want - have) for want, have in zip(self.size, spatial)]
        start = [int(torch.randint(0, have + p - want + 1, ())) for want, have, p in zip(self.size, spatial, pad)]
        region = (slice(None), *(slice(a, a + want) for a, want in zip(start, self.size)))
        widths = [w for amount in reversed(pad) for w in (0, amount)]
        out = dict(sample)
        for key in ("image", "label"):
            if key in sample:
                out[key] = torch.nn.functional.pad(sample[key], widths)[region] if any(pad) else sample[key][region]
        return out


class SegmentationDataModule(CacheDataModule[SegmentationDataset]):
    """Training samples ``{"image" [1, *spatial_size], "label" [1, *spatial_size]}``: axial slices
    (``mode="slices"``, zero-padded then randomly cropped to ``spatial_size``, 2 entries) or random 3D
    patches (``mode="patches"``, ``patches_per_volume`` per volume and epoch, ``spatial_size`` 3 entries);
    validation/test samples are whole volumes ``image [1, Z, Y, X]`` with ``label``, ``spacing`` (z, y, x
    mm) and ``volume_id``. Every volume of the cache needs a label map.

    ``split_fractions`` (e.g. ``{train: 0.6, val: 0.2, test: 0.2}``) split a cache without a ``split``
    column by case (``case_id``, else the volume id), seeded by ``split_seed``. ``label_fraction`` (0, 1]
    of the training cases is kept (at least one), drawn with ``fraction_seed`` (the same arguments as
    :class:`~medssl.data.datamodules.classification.ClassificationDataModule`'s)."""

    def __init__(
        self,
        cache: str,
        mode: str = "slices",
        spatial_size: Sequence[int] = (224, 224),
        batch_size: int = 16,
        num_workers: int | None = None,
        seed: int = 0,
        patches_per_volume: int = 4,
        label_fraction: float = 1.0,
        fraction_seed: int = 0,
        split_fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
    ):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split)
        if mode not in ("slices", "patches"):
            raise ValueError(f"mode must be 'slices' (2D) or 'patches' (3D), got {mode!r}")
        wanted = 2 if mode == "slices" else 3
        if len(spatial_size) != wanted:
            raise ValueError(f"mode {mode!r} needs spatial_size with {wanted} entries, got {list(spatial_size)}")
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        self.mode, self.spatial_size = mode, tuple(int(s) for s in spatial_size)
        self.patches_per_volume, self.label_fraction = patches_per_volume, label_fraction
        self.split_fractions = dict(split_fractions) if split_fractions else None
        self.split_seed, self.fraction_seed = split_seed, fraction_seed
        self.volumes: dict[str, list[str]] = {}  # volume ids per stage, after setup

    # -- which volumes go where ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        from medssl.cache import VolumeCache

        cache = VolumeCache(self.cache)
        if not cache.ids:
            raise InputError(f"{self.cache}: the volume cache holds no complete volume; run medssl cache-volumes")
        unlabelled = [v for v in cache.ids if cache.label(v) is None]
        if unlabelled:
            raise InputError(
                f"{self.cache}: volumes without a label map: {', '.join(unlabelled[:5])}"
                f"{' …' if len(unlabelled) > 5 else ''}; segmentation needs one per volume (manifest column label)"
            )
        split_of = self._splits(cache)
        self.volumes = {name: [v for v in cache.ids if split_of[v] == self.splits[name]] for name in self.splits}
        cases = {v: str(cache.metadata(v).get("case_id") or v) for v in cache.ids}
        train_cases = sorted({cases[v] for v in self.volumes["train"]})
        if not train_cases:
            raise InputError(
                f"{self.cache}: no training volumes (split {self.splits['train']!r}; the cache's splits are "
                f"{sorted(set(split_of.values()))}): set train_split or split_fractions"
            )
        if self.label_fraction < 1.0:
            kept = set(fraction_of_cases(dict.fromkeys(train_cases, "all"), self.label_fraction, self.fraction_seed))
            self.volumes["train"] = [v for v in self.volumes["train"] if cases[v] in kept]
        self.datasets["train"] = self._train_dataset(self.volumes["train"])
        for name in ("val", "test"):
            ids = self.volumes[name]
            self.datasets[name] = VolumeStackDataset(cache, volume_ids=ids, labels=True) if ids else None

    def _splits(self, cache) -> dict[str, str]:
        """``{volume: split}`` from the cache, or dealt by case when the cache has no splits."""
        recorded = {v: str(cache.metadata(v).get("split") or "") for v in cache.ids}
        if all(recorded.values()):
            return recorded
        if any(recorded.values()):
            missing = [v for v, s in recorded.items() if not s]
            raise InputError(
                f"{self.cache}: some volumes have a split and some not ({', '.join(missing[:5])}): "
                "give every volume a split in the manifest, or none (then split_fractions deal the cases)"
            )
        cases = {v: str(cache.metadata(v).get("case_id") or v) for v in cache.ids}
        fractions = self.split_fractions or {"train": 0.6, "val": 0.2, "test": 0.2}
        by_case = stratified_case_split(dict.fromkeys(sorted(set(cases.values())), "all"), fractions, self.split_seed)
        return {v: by_case[cases[v]] for v in cache.ids}

    def _train_dataset(self, volume_ids: list[str]) -> SegmentationDataset:
        common = dict(volume_ids=volume_ids, labels=True, seed=self.seed)
        if self.mode == "patches":
            return VolumePatchDataset(
                self.cache, patch_size=self.spatial_size, patches_per_volume=self.patches_per_volume, **common
            )
        return VolumeSliceDataset(self.cache, transform=PadRandomCrop(self.spatial_size), **common)

    # -- checks the model asks for -------------------------------------------------------------
    def check_labels(self, num_classes: int) -> None:
        """Refuse label values outside ``0 … num_classes - 1`` in any selected volume, naming it."""
        from medssl.cache import VolumeCache

        cache = VolumeCache(self.cache)
        for volume_id in sorted({v for ids in self.volumes.values() for v in ids}):
            label = cache.label(volume_id)
            if label is None:
                continue  # setup refused these
            values = np.asarray(label[:])
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= num_classes:
                raise InputError(
                    f"{self.cache}: volume {volume_id!r} has label values {low}..{high}, outside 0..{num_classes - 1}: "
                    f"set num_classes (background included) to {high + 1}, or fix the label map"
                )

    # -- loaders ----------------------------------------------------------------------------------
    def train_dataloader(self):
        dataset = self._stage_dataset("train")
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=True)
        return self._loader(dataset, train=True, sampler=sampler)

    def _eval_loader(self, dataset: SegmentationDataset):
        """One whole volume per step, in storage order, the same on every rank."""
        return DataLoader(
            dataset,
            batch_size=1,
            shuffle=False,
            num_workers=min(self.num_workers, 1),
            worker_init_fn=seed_worker,
            persistent_workers=False,
        )
