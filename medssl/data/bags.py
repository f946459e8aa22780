"""Slide-level datasets for weakly supervised learning: bags of instances, and sets of stains per case.

A bag sample is ``{"instances": Tensor[N, ...], "coords": int64 [N, 2], "label": int, "slide_id": str}``.
Instances are tile pixels (uint8 ``[N, 3, T, T]``) or, when ``features`` names an embedding folder
written by ``medssl embed`` (one ``[N, D]`` array per slide, aligned with the tile index), float32 ``[N, D]``.
Only the slide's label is ever returned: whatever instance-level truth a cache may carry is never read
here, so training code cannot see it (evaluation reads it explicitly).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from medssl.data.datasets import TileDataset
from medssl.errors import CacheError
from medssl.preprocess.cache import SlideCache, store_path

BAG_KEYS = ("instances", "coords", "label", "slide_id", "stain")


class SlideBagDataset(Dataset):
    """One item per slide. ``max_instances`` keeps a random subset (fresh each epoch) to bound memory
    in training; leave it None for inference on whole slides."""

    def __init__(
        self,
        cache: str | os.PathLike | SlideCache,
        features: str | os.PathLike | None = None,
        max_instances: int | None = None,
        transform: Callable[[dict], dict] | None = None,
        **filters,
    ):
        self.tiles = TileDataset(cache, **filters)
        self.features = _open_embeddings(features, self.tiles.slide_ids) if features is not None else None
        self.max_instances = max_instances
        self.transform = transform

    @property
    def slide_ids(self) -> list[str]:
        return self.tiles.slide_ids

    @property
    def classes(self) -> list[str]:
        return self.tiles.classes

    def __len__(self) -> int:
        return len(self.tiles.slide_ids)

    def __getitem__(self, index: int) -> dict:
        return self.bag(index)

    def bag(self, index: int, instances: np.ndarray | None = None) -> dict:
        """Slide ``index`` with the given instance indices (default: all, or a random subset)."""
        slide_id = self.tiles.slide_ids[index]
        count = int(self.tiles.offsets[index + 1] - self.tiles.offsets[index])
        if instances is None:
            instances = np.arange(count)
            if self.max_instances is not None and count > self.max_instances:
                instances = np.sort(torch.randperm(count)[: self.max_instances].numpy())
        if self.features is not None:
            rows = self.features[f"{slide_id}/features"].get_orthogonal_selection((instances,))
            values = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        else:
            pixels = self.tiles._reader(index).read(instances)
            values = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        sample = {
            "instances": values,
            "coords": torch.from_numpy(self.tiles._coords_of(index)[instances]),
            "label": int(self.tiles.slide_labels[index]),
            "slide_id": slide_id,
            "stain": str(self.tiles.cache.metadata(slide_id).get("stain", "")),
        }
        return self.transform(sample) if self.transform is not None else sample


def _open_embeddings(folder: str | os.PathLike, slide_ids: Sequence[str]) -> zarr.Group:
    """The ``embeddings`` group of a ``medssl embed`` folder, checked to hold every selected slide."""
    path = store_path(folder)
    try:
        group = zarr.open_group(path, mode="r")["embeddings"]
    except (FileNotFoundError, KeyError):
        raise CacheError(f"{folder}: not an embedding folder (run medssl embed --out {folder})") from None
    missing = [slide_id for slide_id in slide_ids if slide_id not in group]
    if missing:
        raise CacheError(f"{folder}: no embeddings for {len(missing)} slide(s) ({', '.join(missing[:5])}); "
                         "run or resume medssl embed on this cache")
    return group


def collate_bags(samples: Sequence[dict]) -> dict:
    """Pad bags to the longest: ``instances [B, N_max, ...]``, ``mask [B, N_max]`` (True = real)."""
    longest = max(len(s["instances"]) for s in samples)
    first = samples[0]["instances"]
    instances = torch.zeros((len(samples), longest, *first.shape[1:]), dtype=first.dtype)
    coords = torch.zeros((len(samples), longest, 2), dtype=torch.int64)
    mask = torch.zeros((len(samples), longest), dtype=torch.bool)
    for row, sample in enumerate(samples):
        n = len(sample["instances"])
        instances[row, :n], coords[row, :n], mask[row, :n] = sample["instances"], sample["coords"], True
    return {
        "instances": instances,
        "coords": coords,
        "mask": mask,
        "label": torch.tensor([s["label"] for s in samples]),
        "slide_id": [s["slide_id"] for s in samples],
    }


class StainSetDataset(Dataset):
    """One item per case (the ``case_id`` CSV column): the bags of its slides in different stains, for
    multistain alignment. Cases with fewer than ``min_stains`` distinct stains are left out."""

    def __init__(
        self,
        cache: str | os.PathLike | SlideCache,
        features: str | os.PathLike | None = None,
        stains: Iterable[str] | None = None,
        min_stains: int = 2,
        max_instances: int | None = None,
        **filters,
    ):
        self.bags = SlideBagDataset(cache, features=features, max_instances=max_instances, stains=stains, **filters)
        by_case: dict[str, dict[str, int]] = defaultdict(dict)
        for position, slide_id in enumerate(self.bags.slide_ids):
            meta = self.bags.tiles.cache.metadata(slide_id)
            if meta.get("case_id"):
                by_case[str(meta["case_id"])].setdefault(str(meta.get("stain", "")), position)
        self.cases = sorted(case for case, found in by_case.items() if len(found) >= min_stains)
        self._members = {case: dict(sorted(by_case[case].items())) for case in self.cases}

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        members = self._members[case]
        bags = [self.bags[position] for position in members.values()]
        return {"case_id": case, "stains": list(members), "bags": bags, "label": bags[0]["label"]}
