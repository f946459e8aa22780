"""Labelled samples for classification fine-tuning: tiles of a tile cache, or slices, 3D patches or
whole volumes of a volume cache, each with a class, split by case.

Labels come from the cache (a tile cache records each slide's ``label``) or from a CSV keyed by
``slide_id`` / ``volume_id`` / ``case_id`` (column ``label``), or, for tiles, ``slide_id,tile,label``
(one label per tile). Every sample of a case (the ``case_id`` the cache recorded, else the slide or
volume id) lands in one split: the cache's own ``split`` when it has one, else a seeded split
stratified by class (:func:`~medssl.data.splits.stratified_case_split`). ``label_fraction`` keeps a
seeded, stratified share of the training *cases* (nested across fractions for one ``fraction_seed``),
the label-efficiency protocol. Anything that would leave a run training on a silently wrong or empty
set (unknown class names, CSV ids the cache lacks, unlabelled samples, empty splits, a class missing
from training, a case in two splits) stops ``setup`` with an :class:`~medssl.errors.InputError`
naming the case or file.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.data import splits as case_splits
from medssl.data.datamodules.base import CacheDataModule
from medssl.data.samplers import BlockShuffleSampler
from medssl.data.seeding import Key, seeded, split_key
from medssl.errors import InputError

Unit = Literal["tiles", "slices", "patches", "volumes"]
UNITS = ("tiles", "slices", "patches", "volumes")
STAGES = ("train", "val", "test")


class LabelledSamples(Dataset):
    """A subset of a cache dataset (``base``: tiles, slices, patches or volumes), each sample with a
    class index: ``{"image", "label", "sample_id", "case_id"}``.

    ``indices`` (ascending) are the base's sample indices; ``items`` the position of each sample's
    slide/volume in ``item_ids`` and ``local`` its index inside it (tile, slice or patch number), which
    name the sample (``<item>:<local>``; a whole volume is ``<item>``). Keys may be ``(index, epoch)``
    pairs: ``transform`` (the training augmentation) is then seeded by (``seed``, epoch, sample);
    evaluation keys read the base at epoch 0, so random patch positions are the same on every rank
    and every evaluation."""

    def __init__(
        self,
        base: Any,
        indices: np.ndarray,
        labels: np.ndarray,
        items: np.ndarray,
        local: np.ndarray,
        item_ids: Sequence[str],
        case_ids: Sequence[str],
        whole_items: bool = False,
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
    ):
        self.base, self.indices, self.labels = base, indices, labels
        self.items, self.local, self.item_ids, self.case_ids = items, local, list(item_ids), list(case_ids)
        self.whole_items, self.transform, self.seed = whole_items, transform, seed

    def __len__(self) -> int:
        return len(self.indices)

    def sample_id(self, index: int) -> str:
        item = self.item_ids[int(self.items[index])]
        return item if self.whole_items else f"{item}:{int(self.local[index])}"

    def blocks(self) -> list[tuple[int, int]]:
        """The base's storage blocks as runs of this subset (reads stay local under block shuffling)."""
        out = []
        for start, stop in self.base.blocks():
            lo, hi = np.searchsorted(self.indices, [start, stop])
            if hi > lo:
                out.append((int(lo), int(hi)))
        return out

    def __getitem__(self, key: Key) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Key]) -> list[dict]:
        pairs = [split_key(key) for key in keys]
        base_keys = [(int(self.indices[i]), 0 if epoch is None else epoch) for i, epoch in pairs]
        many = getattr(self.base, "__getitems__", None)
        raw = many(base_keys) if many is not None else [self.base[k] for k in base_keys]
        samples = []
        for (index, epoch), sample in zip(pairs, raw):
            sample = {"image": sample["image"]}
            if self.transform is not None and epoch is not None:
                with seeded(self.transform, self.seed, epoch, index):
                    sample = self.transform(sample)
            image = sample["image"]
            samples.append(
                {
                    "image": image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image),
                    "label": int(self.labels[index]),
                    "sample_id": self.sample_id(index),
                    "case_id": self.case_ids[int(self.items[index])],
                }
            )
        return samples


@dataclass
class Item:
    """One slide or volume: its case, split, and labels (one for the whole item, or per tile)."""

    item_id: str
    case_id: str
    size: int  # tiles of a slide, slices of a volume (what tile-level labels index)
    label: str | None = None
    tile_labels: dict[int, str] | None = None
    split: str = ""
    labelled: list[tuple[int, str]] = field(default_factory=list)  # (local index, label); -1: whole item


class ClassificationDataModule(CacheDataModule[LabelledSamples]):
    """Classification samples from a medssl cache.

    ``unit``: ``tiles`` (a tile cache), ``slices`` (2D axial slices), ``patches`` (random 3D patches of
    ``spatial_size``, ``patches_per_volume`` per volume per epoch) or ``volumes`` (whole volumes,
    resized to ``spatial_size``) of a volume cache. ``spatial_size``: the slices' (pad/crop), patches'
    or volumes' size; needed for volume units. ``labels_csv``: see the module docstring; without it the
    cache's ``label`` metadata. ``classes``: the class order (ordinal grades: lowest first); default
    the sorted names. ``drop_unlabelled``: leave out samples without a label instead of refusing them.
    ``split_fractions`` / ``split_seed``: the stratified case split when the cache has no ``split``
    metadata (default train 0.6, val 0.2, test 0.2). ``label_fraction`` / ``fraction_seed``: the share
    of training cases kept. ``augment``: random flips and 90° rotations in training (MONAI dictionary
    transforms; turn off when orientation carries the label, e.g. laterality).
    """

    def __init__(
        self,
        cache: str,
        unit: Unit = "tiles",
        labels_csv: str | None = None,
        classes: Sequence[str] | None = None,
        drop_unlabelled: bool = False,
        split_fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        label_fraction: float = 1.0,
        fraction_seed: int = 0,
        spatial_size: Sequence[int] | None = None,
        patches_per_volume: int = 4,
        augment: bool = True,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 0,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
    ):
        super().__init__(cache, batch_size, num_workers, seed, train_split, val_split, test_split)
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if unit != "tiles" and spatial_size is None:
            raise InputError(f"unit {unit!r} needs spatial_size (the size every {unit[:-1]} is brought to)")
        if not 0.0 < label_fraction <= 1.0:
            raise InputError(f"label_fraction must be in (0, 1], got {label_fraction}")
        self.unit, self.labels_csv, self.drop_unlabelled = unit, labels_csv, drop_unlabelled
        self.requested_classes = list(classes) if classes is not None else None
        self.split_fractions = dict(split_fractions) if split_fractions else None
        self.split_seed, self.label_fraction, self.fraction_seed = split_seed, label_fraction, fraction_seed
        self.spatial_size = tuple(int(s) for s in spatial_size) if spatial_size is not None else None
        self.patches_per_volume, self.augment = patches_per_volume, augment
        self.classes: list[str] = []
        self.case_splits: dict[str, str] = {}  # case → split, after setup
        self.split_names: set[str] = set()

    # -- setup: items, labels, splits ------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        reader = self._reader()
        items = self._items(reader)
        self._label(items, reader)
        labels = sorted({label for item in items for _, label in item.labelled})
        self.classes = self.requested_classes if self.requested_classes is not None else labels
        unknown = {label for label in labels if label not in self.classes}
        if unknown:
            named = [i.item_id for i in items if any(label in unknown for _, label in i.labelled)][:5]
            raise InputError(
                f"{self.cache}: unknown class names {sorted(unknown)} (in {', '.join(named)}); "
                f"classes are {self.classes}: add them to classes or fix the labels"
            )
        self._assign_splits(items)
        by_split = {name: [i for i in items if i.split == self.splits[name]] for name in STAGES if self.splits[name]}
        present = {name: group for name, group in by_split.items() if self._split_exists(self.splits[name])}
        if "train" in present and self.label_fraction < 1.0:
            present["train"] = self._fraction(present["train"])
        case_splits.check_classes(
            {name: [label for i in group for _, label in i.labelled] for name, group in present.items()},
            self.classes,
            str(self.cache),
        )
        for name in STAGES:
            group = present.get(name)
            self.datasets[name] = None if group is None else self._dataset(reader, group, train=name == "train")

    def _reader(self):
        from medssl.cache import SlideCache, VolumeCache

        return SlideCache(self.cache) if self.unit == "tiles" else VolumeCache(self.cache)

    def _items(self, reader) -> list[Item]:
        items = []
        for item_id in reader.ids:
            meta = reader.metadata(item_id)
            size = int(meta["num_tiles"]) if self.unit == "tiles" else int(reader.shape(item_id)[0])
            label = meta.get("label") if isinstance(meta.get("label"), str) and meta.get("label") else None
            case = str(meta.get("case_id") or item_id)
            items.append(Item(item_id, case, size, label=label, split=str(meta.get("split") or "")))
        if not items:
            raise InputError(
                f"{self.cache}: the cache holds no complete {'slides' if self.unit == 'tiles' else 'volumes'}"
            )
        return items

    def _label(self, items: list[Item], reader) -> None:
        """Fill each item's labelled samples from the CSV or the cache's metadata; refuse CSV ids the
        cache lacks and (unless ``drop_unlabelled``) unlabelled samples."""
        if self.labels_csv is not None:
            self._read_csv(items)
        unlabelled = []
        for item in items:
            if item.tile_labels is not None:
                item.labelled = sorted(item.tile_labels.items())
                missing = item.size - len(item.labelled)
                if missing:
                    unlabelled.append(f"{item.item_id} ({missing} of {item.size} tiles)")
            elif item.label is not None:
                item.labelled = [(-1, item.label)]
            else:
                unlabelled.append(item.item_id)
        if unlabelled and not self.drop_unlabelled:
            source = self.labels_csv or f"{self.cache} (its label metadata)"
            raise InputError(
                f"{source}: no label for {len(unlabelled)} item(s): {', '.join(unlabelled[:5])}; label them "
                "or set drop_unlabelled: true to leave them out"
            )

    def _read_csv(self, items: list[Item]) -> None:
        path = Path(self.labels_csv or "")
        if not path.is_file():
            raise InputError(f"{path}: labels_csv not found")
        with open(path, newline="") as handle:
            columns = csv.DictReader(handle).fieldnames or []
        by_id = {item.item_id: item for item in items}
        if self.unit == "tiles" and "tile" in columns:
            self._read_tile_csv(path, by_id)
            return
        item_key = "slide_id" if self.unit == "tiles" else "volume_id"
        key = item_key if item_key in columns else "case_id" if "case_id" in columns else None
        if key is None:
            raise InputError(f"{path}: needs a {item_key!r} or 'case_id' column and 'label'; it has {columns}")
        labels = case_splits.read_label_csv(path, key)
        known = set(by_id) if key == item_key else {item.case_id for item in items}
        strangers = sorted(set(labels) - known)
        if strangers:
            raise InputError(
                f"{path}: {key} {', '.join(strangers[:5])} not in the cache {self.cache} "
                f"({len(strangers)} unknown); fix the ids or the cache"
            )
        for item in items:
            item.label = labels.get(item.item_id if key == item_key else item.case_id)

    def _read_tile_csv(self, path: Path, by_id: dict[str, Item]) -> None:
        with open(path, newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                slide, tile, label = (
                    (row.get("slide_id", "") or "").strip(),
                    row.get("tile", ""),
                    (row.get("label") or "").strip(),
                )
                item = by_id.get(slide)
                if item is None:
                    raise InputError(f"{path}, line {line}: slide_id {slide!r} is not in the cache {self.cache}")
                try:
                    index = int(tile)
                except (TypeError, ValueError):
                    raise InputError(f"{path}, line {line}: tile {tile!r} is not a tile index") from None
                if not 0 <= index < item.size or not label:
                    raise InputError(
                        f"{path}, line {line}: slide {slide!r} has tiles 0..{item.size - 1}; got tile {tile!r} "
                        f"with label {label!r}"
                    )
                item.tile_labels = item.tile_labels if item.tile_labels is not None else {}
                item.tile_labels[index] = label
        for item in by_id.values():
            if item.tile_labels is None:
                item.tile_labels = {}

    def _assign_splits(self, items: list[Item]) -> None:
        """Each labelled item's split: the cache's (refusing a case in two splits), else a stratified
        seeded split of the cases stratified by :func:`case_classes`."""
        labelled = [item for item in items if item.labelled]
        cases: dict[str, list[Item]] = {}
        for item in labelled:
            cases.setdefault(item.case_id, []).append(item)
        if any(item.split for item in labelled):
            for case, group in cases.items():
                named = sorted({item.split for item in group})
                if len(named) > 1:
                    where = ", ".join(f"{i.item_id}: {i.split or '(none)'}" for i in group)
                    raise InputError(f"{self.cache}: case {case!r} is in several splits ({where}); one case, one split")
            self.case_splits = {case: group[0].split for case, group in cases.items()}
            self.split_names = set(self.case_splits.values()) - {""}
            return
        case_labels = case_classes(cases)
        self.case_splits = case_splits.stratified_case_split(case_labels, self.split_fractions, self.split_seed)
        self.split_names = set(self.split_fractions or {"train": 0.6, "val": 0.2, "test": 0.2})
        for item in labelled:
            item.split = self.case_splits[item.case_id]

    def _split_exists(self, name: str | None) -> bool:
        """Whether a stage's split is one this data defines (the cache's split names, or the fractions')."""
        if name is None:
            return False
        return name in self.split_names

    def _fraction(self, group: list[Item]) -> list[Item]:
        cases: dict[str, list[Item]] = {}
        for item in group:
            cases.setdefault(item.case_id, []).append(item)
        kept = set(case_splits.label_fraction(case_classes(cases), self.label_fraction, self.fraction_seed))
        return [item for item in group if item.case_id in kept]

    # -- datasets and loaders --------------------------------------------------------------------
    def _dataset(self, reader, group: list[Item], train: bool) -> LabelledSamples:
        base, starts = self._base(reader, [item.item_id for item in group])
        class_index = {name: k for k, name in enumerate(self.classes)}
        indices, labels, positions, local = [], [], [], []
        for k, item in enumerate(group):
            start, stop = starts[k], starts[k + 1]
            for position, label in item.labelled:
                chosen = np.arange(start, stop) if position < 0 else np.array([start + position])
                indices.append(chosen)
                labels.append(np.full(len(chosen), class_index[label]))
                positions.append(np.full(len(chosen), k))
                local.append(chosen - start)
        return LabelledSamples(
            base,
            np.concatenate(indices).astype(np.int64),
            np.concatenate(labels).astype(np.int64),
            np.concatenate(positions).astype(np.int64),
            np.concatenate(local).astype(np.int64),
            [item.item_id for item in group],
            [item.case_id for item in group],
            whole_items=self.unit == "volumes",
            transform=self._augmentation() if train and self.augment else None,
            seed=self.seed,
        )

    def _base(self, reader, item_ids: list[str]) -> tuple[Any, list[int]]:
        """The cache dataset of the unit over ``item_ids`` and where each item's samples start in it."""
        from medssl.data.datasets import TileDataset
        from medssl.data.volumes import VolumePatchDataset, VolumeSliceDataset, VolumeStackDataset

        if self.unit == "tiles":
            tiles = TileDataset(reader, slide_ids=item_ids)
            return tiles, [int(o) for o in tiles.offsets]
        size = self.spatial_size or ()
        if self.unit == "slices":
            from monai.transforms.croppad.dictionary import ResizeWithPadOrCropd

            slices = VolumeSliceDataset(reader, volume_ids=item_ids, transform=ResizeWithPadOrCropd(["image"], size))
            return slices, [int(o) for o in slices.offsets]
        if self.unit == "patches":
            n = self.patches_per_volume
            patches = VolumePatchDataset(reader, volume_ids=item_ids, patch_size=size, patches_per_volume=n)
            return patches, [k * n for k in range(len(item_ids) + 1)]
        from monai.transforms.spatial.dictionary import Resized

        volumes = VolumeStackDataset(reader, volume_ids=item_ids, transform=Resized(["image"], size, mode="area"))
        return volumes, list(range(len(item_ids) + 1))

    def _augmentation(self) -> Callable[[dict], dict]:
        """Random flips along every spatial axis and 90° rotations in the (last two axes') plane."""
        from monai.transforms.compose import Compose
        from monai.transforms.spatial.dictionary import RandFlipd, RandRotate90d

        dims = 2 if self.unit in ("tiles", "slices") else 3
        flips = [RandFlipd(["image"], prob=0.5, spatial_axis=axis) for axis in range(dims)]
        rotate = RandRotate90d(["image"], prob=0.5, max_k=3, spatial_axes=(dims - 2, dims - 1))
        return Compose([*flips, rotate])  # pyright: ignore[reportReturnType]  (a dict in gives a dict out)

    def train_dataloader(self):
        dataset = self._stage_dataset("train")
        sampler = BlockShuffleSampler(dataset.blocks(), seed=self.seed, with_epoch=True)
        if len(sampler) < self.batch_size:
            raise InputError(
                f"{self.cache}: the train split has {len(sampler)} samples per process, fewer than batch_size "
                f"{self.batch_size}; lower batch_size (a smaller last batch is dropped in training)"
            )
        return self._loader(dataset, train=True, sampler=sampler)

    # -- what the Classifier reads ---------------------------------------------------------------
    def class_counts(self, stage: str = "train") -> torch.Tensor:
        """Samples per class in a stage's dataset (for balanced class weights)."""
        labels = self._stage_dataset(stage).labels
        return torch.as_tensor(np.bincount(labels, minlength=len(self.classes)), dtype=torch.float64)


def case_classes(cases: Mapping[str, Sequence[Item]]) -> dict[str, str]:
    """The class each case is stratified by: the rarest class (over all cases) among its samples. With
    one label per case that is its label; with tile-level labels a slide holding any lesion tiles
    counts as a lesion case, so every split and every label fraction gets cases with lesions (by the
    majority, lesion slides would count as normal and a 1 % subset could hold no lesion tile at all)."""
    per_case: dict[str, Counter] = {}
    for case, group in cases.items():
        counts = per_case.setdefault(case, Counter())
        for item in group:
            for position, label in item.labelled:
                counts[label] += item.size if position < 0 else 1
    overall = sum(per_case.values(), Counter())
    return {case: min(counts, key=lambda label: (overall[label], label)) for case, counts in per_case.items() if counts}
