"""Slide-level datasets for weakly supervised learning: bags of instances, and sets of stains per case.

A bag sample is ``{"instances": Tensor[N, ...], "coords": int64 [N, 2], "label": int, "slide_id": str}``.
Instances are tile pixels (uint8 ``[N, 3, T, T]``) or, when ``features`` names an embedding folder
written by ``medssl embed`` (one ``[N, D]`` array per slide, aligned with the tile index), float32 ``[N, D]``.

Three views of the same slides:
- :class:`SlideBagDataset`: one bag per slide (training bag models such as ABMIL);
- :class:`InstanceDataset`: every instance on its own with its slide's label (training instance
  classifiers such as INS);
- :class:`BagPieceDataset`: whole bags in pieces of at most ``piece_size`` instances, in order
  (inference on bags of any size in bounded memory).

Only the slide's label is ever returned for training. Instance-level truth (lesion masks) is read by
:class:`BagPieceDataset` alone, and only when it is given ``instance_truth``, for evaluation.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.cache import EmbeddingCache, SlideCache
from medssl.data.datasets import TileDataset
from medssl.data.seeding import Key, sample_seed, split_key
from medssl.errors import CacheError, InputError

BAG_KEYS = ("instances", "coords", "label", "slide_id", "stain")


class SlideBagDataset(Dataset):
    """One item per slide. ``max_instances`` keeps a random subset to bound memory in training; leave it
    None for inference on whole slides. With ``(index, epoch)`` keys (an epoch-aware sampler) the subset
    is a function of (``seed``, epoch, slide), so runs replay exactly."""

    def __init__(
        self,
        cache: str | os.PathLike | SlideCache,
        features: str | os.PathLike | None = None,
        max_instances: int | None = None,
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
        **filters,
    ):
        self.tiles = TileDataset(cache, **filters)
        self.features = EmbeddingCache(features).require(self.tiles.slide_ids) if features is not None else None
        self.max_instances = max_instances
        self.transform = transform
        self.seed = seed

    @property
    def slide_ids(self) -> list[str]:
        return self.tiles.slide_ids

    @property
    def classes(self) -> list[str]:
        return self.tiles.classes

    def __len__(self) -> int:
        return len(self.tiles.slide_ids)

    def size(self, index: int) -> int:
        """Number of instances in bag ``index``."""
        return int(self.tiles.offsets[index + 1] - self.tiles.offsets[index])

    def __getitem__(self, key: Key) -> dict:
        index, epoch = split_key(key)
        return self.bag(index, epoch=epoch)

    def bag(self, index: int, instances: np.ndarray | None = None, epoch: int | None = None) -> dict:
        """Slide ``index`` with the given instance indices (default: all, or a random subset)."""
        slide_id = self.tiles.slide_ids[index]
        count = self.size(index)
        if instances is None:
            instances = np.arange(count)
            if self.max_instances is not None and count > self.max_instances:
                if epoch is None:
                    chosen = torch.randperm(count)[: self.max_instances].numpy()
                else:
                    rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
                    chosen = rng.choice(count, self.max_instances, replace=False)
                instances = np.sort(chosen)
        if self.features is not None:
            rows = self.features.features(slide_id).get_orthogonal_selection((instances,))
            values = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        else:
            pixels = self.tiles.reader(index).read(instances)
            values = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        sample = {
            "instances": values,
            "coords": torch.from_numpy(self.tiles.coords_of(index)[instances]),
            "label": int(self.tiles.slide_labels[index]),
            "slide_id": slide_id,
            "stain": str(self.tiles.cache.metadata(slide_id).get("stain", "")),
        }
        return self.transform(sample) if self.transform is not None else sample


class InstanceDataset(Dataset):
    """Every instance of the selected slides, one item each: ``{"instances": float32 [D]}`` (features)
    or the ``transform``'s output of the tile sample (pixels, e.g. two views), plus ``index`` (a stable
    position among all instances, for per-instance state such as INS's soft labels), ``slide`` and the
    slide's ``label``. Nothing instance-level from any annotation is returned.

    Features are read into memory once (``N × D`` float32: 100,000 instances of 1024-d are 400 MB);
    pixels stay in the cache and are read in storage blocks (use ``blocks()`` with
    :class:`~medssl.data.samplers.BlockShuffleSampler`)."""

    def __init__(
        self,
        cache: str | os.PathLike | SlideCache,
        features: str | os.PathLike | None = None,
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
        **filters,
    ):
        self.tiles = TileDataset(cache, transform=transform, seed=seed, **filters)
        counts = np.diff(self.tiles.offsets)
        self.slide_of = np.repeat(np.arange(len(counts)), counts)
        self.features = None
        if features is not None:
            embeddings = EmbeddingCache(features).require(self.tiles.slide_ids)
            arrays = [
                np.asarray(embeddings.features(slide_id)[:], dtype=np.float32) for slide_id in self.tiles.slide_ids
            ]
            self.features = torch.from_numpy(np.concatenate(arrays)) if arrays else torch.zeros(0, 0)
            if len(self.features) != len(self.slide_of):
                raise CacheError(
                    f"{features}: {len(self.features)} embedding rows for {len(self.slide_of)} tiles; "
                    "re-run medssl embed on this cache"
                )

    @property
    def labels(self) -> np.ndarray:
        """The slide label of every instance."""
        return self.tiles.slide_labels[self.slide_of]

    def __len__(self) -> int:
        return len(self.slide_of)

    def blocks(self) -> list[tuple[int, int]]:
        return self.tiles.blocks() if self.features is None else [(0, len(self))]

    def __getitem__(self, key: Key) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Key]) -> list[dict]:
        indices = [split_key(key)[0] for key in keys]
        samples: list[dict]
        if self.features is None:
            samples = self.tiles.__getitems__(keys)
        else:
            samples = [{"instances": self.features[i]} for i in indices]
        for sample, index in zip(samples, indices):
            slide = int(self.slide_of[index])
            sample.pop("slide_id", None)
            sample.update(index=index, slide=slide, label=int(self.tiles.slide_labels[slide]))
        return samples


class BagPieceDataset(Dataset):
    """Whole bags of ``bags`` in consecutive pieces of at most ``piece_size`` instances, slide after
    slide: ``{"instances", "coords", "label", "slide_id", "slide", "start", "bag_size", "last", "cache"}``
    (``cache``: the tile cache's path, where heatmaps find the slide's thumbnail). Use it
    with ``batch_size=None`` and in order; a model accumulates a slide's pieces (see
    :class:`~medssl.methods.base.SlideClassifier`), so a bag of 100,000 instances never sits in memory.

    ``instance_truth`` (for evaluation only) adds ``instance_truth`` (float, 1 = positive, NaN = unknown)
    per instance from :class:`~medssl.data.truth.LesionMasks`."""

    def __init__(self, bags: SlideBagDataset, piece_size: int = 8192, instance_truth=None):
        if piece_size < 1:
            raise ValueError(f"piece_size must be positive, got {piece_size}")
        self.bags, self.piece_size, self.truth = bags, piece_size, instance_truth
        self.pieces = [(slide, start) for slide in range(len(bags)) for start in range(0, bags.size(slide), piece_size)]

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, index: int) -> dict:
        slide, start = self.pieces[index]
        size = self.bags.size(slide)
        stop = min(start + self.piece_size, size)
        piece = self.bags.bag(slide, np.arange(start, stop))
        piece.update(slide=slide, start=start, bag_size=size, last=stop == size, cache=str(self.bags.tiles.cache.path))
        if self.truth is not None:
            meta = self.bags.tiles.cache.metadata(piece["slide_id"])
            piece["instance_truth"] = torch.from_numpy(
                self.truth.instance_truth(meta, piece["coords"].numpy(), bag_label=piece["label"])
            )
        return piece


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
    """One item per case (the ``case_id`` CSV column): its slides in a fixed order of stains, each as
    ``tokens`` patch features resampled to a fixed count, for multistain alignment (MADELEINE)::

        {"tokens": float32 [M, T, D], "present": bool [M], "stains": [M names], "case_id": str, "label": int}

    ``stains`` fixes the order (default: every stain found, ``reference_stain`` first, then sorted); a
    stain the case lacks is all zeros with ``present`` False, for the model to mask, never to use.
    Resampling per slide: ``tokens`` rows drawn without replacement when the slide has that many, with
    replacement otherwise (a small slide's patches repeat), as a function of (``seed``, epoch, case) with
    ``(index, epoch)`` keys, so runs replay exactly. Only cases with ``reference_stain`` and at least
    ``min_stains`` stains are kept. Patch features come from ``medssl embed`` (``features``)."""

    def __init__(
        self,
        cache: str | os.PathLike | SlideCache,
        features: str | os.PathLike,
        stains: Sequence[str] | None = None,
        reference_stain: str = "HE",
        tokens: int = 2048,
        min_stains: int = 2,
        seed: int = 0,
        **filters,
    ):
        if tokens < 1:
            raise ValueError(f"tokens must be positive, got {tokens}")
        self.bags = SlideBagDataset(cache, features=features, stains=stains, **filters)
        by_case: dict[str, dict[str, int]] = defaultdict(dict)
        for position, slide_id in enumerate(self.bags.slide_ids):
            meta = self.bags.tiles.cache.metadata(slide_id)
            case, stain = str(meta.get("case_id") or ""), str(meta.get("stain") or "")
            if case and stain:
                if stain in by_case[case]:
                    raise InputError(
                        f"{self.bags.tiles.cache.path}: case {case!r} has two {stain} slides "
                        f"({self.bags.slide_ids[by_case[case][stain]]}, {slide_id}); keep one per stain"
                    )
                by_case[case][stain] = position
        found = sorted({stain for members in by_case.values() for stain in members} - {reference_stain})
        self.stains = [reference_stain, *found] if stains is None else list(stains)
        if reference_stain not in self.stains:
            raise InputError(f"stains {self.stains} must include the reference stain {reference_stain!r}")
        self.reference_stain, self.tokens, self.seed = reference_stain, tokens, seed
        self.cases = sorted(
            case
            for case, members in by_case.items()
            if reference_stain in members and len(set(members) & set(self.stains)) >= min_stains
        )
        self._members = {case: by_case[case] for case in self.cases}
        patches = self.bags.features
        self.dim = int(patches.features(self.bags.slide_ids[0]).shape[1]) if patches and self.bags.slide_ids else 0

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key: Key) -> dict:
        index, epoch = split_key(key)
        case = self.cases[index]
        members = self._members[case]
        rng = np.random.default_rng(sample_seed(self.seed, epoch or 0, index))
        tokens = torch.zeros(len(self.stains), self.tokens, self.dim)
        present = torch.zeros(len(self.stains), dtype=torch.bool)
        for slot, stain in enumerate(self.stains):
            if stain in members:
                position = members[stain]
                count = self.bags.size(position)
                rows = rng.choice(count, self.tokens, replace=count < self.tokens)
                unique, inverse = np.unique(rows, return_inverse=True)
                tokens[slot] = self.bags.bag(position, unique)["instances"][torch.from_numpy(inverse)]
                present[slot] = True
        return {
            "tokens": tokens,
            "present": present,
            "stains": list(self.stains),
            "case_id": case,
            "label": int(self.bags.tiles.slide_labels[members[self.reference_stain]]),
        }


def collate_stain_sets(samples: Sequence[dict]) -> dict:
    """Stack cases: ``tokens [B, M, T, D]``, ``present [B, M]``, ``label [B]``; ``case_id`` a list and
    ``stains`` the one shared order."""
    return {
        "tokens": torch.stack([s["tokens"] for s in samples]),
        "present": torch.stack([s["present"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples]),
        "case_id": [s["case_id"] for s in samples],
        "stains": list(samples[0]["stains"]),
    }
