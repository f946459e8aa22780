"""Datasets over a volume cache (``medssl cache-volumes``): 2D axial slices, 3D patches, slice stacks.

Arrays come from :class:`~medssl.cache.VolumeCache` (memory-mapped when uncompressed). Spatial
axes keep the cache's order ``(z, y, x)``; every sample carries ``spacing`` as ``(z, y, x)`` mm so
anisotropy-aware code can use it. Images are float32 ``[1, ...]``; with ``labels=True`` (every
selected volume must have one) the label map comes as int64 ``[1, ...]`` under ``"label"``.
Keys may be ``(index, epoch)`` pairs, which fix a sample's random draws (patch position, views)
from ``seed`` (:mod:`medssl.data.seeding`). Every sample carries its dataset index as ``"index"``
(an int), which methods with a per-sample memory bank need.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.cache import VolumeCache
from medssl.data.correspondence import PAIR_AUGMENTS, PairViews, pair_augments
from medssl.data.datasets import matches
from medssl.data.seeding import Key, seeded, split_key
from medssl.errors import MedsslError


def _select(cache: VolumeCache, volume_ids, splits, modalities) -> list[str]:
    chosen = []
    for volume_id in volume_ids if volume_ids is not None else cache.ids:
        meta = cache.metadata(volume_id)
        if matches(meta, "split", splits) and matches(meta, "modality", modalities):
            chosen.append(volume_id)
    return chosen


class _VolumeDataset(Dataset):
    def __init__(
        self,
        cache: str | os.PathLike | VolumeCache,
        volume_ids: Sequence[str] | None = None,
        splits: Iterable[str] | None = None,
        modalities: Iterable[str] | None = None,
        transform: Callable[[dict], dict] | None = None,
        labels: bool = False,
        seed: int = 0,
    ):
        self.cache = cache if isinstance(cache, VolumeCache) else VolumeCache(cache)
        self.seed = seed
        self.volume_ids = _select(self.cache, volume_ids, splits, modalities)
        self.labels = labels
        unlabelled = [v for v in self.volume_ids if labels and self.cache.label(v) is None]
        if unlabelled:
            raise MedsslError(
                f"{self.cache.path}: volumes without a label: {', '.join(unlabelled[:5])}; "
                "select labelled volumes or use labels=False"
            )
        self.shapes = [self.cache.shape(v) for v in self.volume_ids]
        self.spacings = [tuple(self.cache.metadata(v)["spacing"][::-1]) for v in self.volume_ids]  # z, y, x
        self.transform = transform

    def __getitem__(self, key: Key) -> dict:
        index, epoch = split_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        with seeded(self.transform, self.seed, epoch, index):
            sample = self._item(index)
        sample["index"] = index  # for methods with a per-sample memory bank (DeepCluster-v2)
        return sample

    def __len__(self) -> int:
        raise NotImplementedError

    def _item(self, index: int) -> dict:
        raise NotImplementedError

    def _sample(self, k: int, region: tuple[int | slice, ...], pad_to: Sequence[int] | None = None, **extra) -> dict:
        """The region of volume ``k`` (zero-padded at the end up to ``pad_to``), then the transform."""
        volume_id = self.volume_ids[k]
        sample = {
            "image": torch.from_numpy(np.asarray(self.cache.image(volume_id)[region], dtype=np.float32))[None],
            "volume_id": volume_id,
            "spacing": torch.tensor(self.spacings[k]),
            **extra,
        }
        if self.labels:
            label = self.cache.label(volume_id)
            if label is None:  # __init__ refuses unlabelled volumes; the cache changed underneath
                raise MedsslError(f"{self.cache.path}: volume {volume_id!r} has no label")
            sample["label"] = torch.from_numpy(np.asarray(label[region], dtype=np.int64))[None]
        if pad_to is not None:
            pad = [p - n for p, n in zip(pad_to, sample["image"].shape[1:])]
            if any(pad):
                widths = [w for amount in reversed(pad) for w in (0, amount)]
                for key in ("image", "label"):
                    if key in sample:
                        sample[key] = torch.nn.functional.pad(sample[key], widths)
        return self.transform(sample) if self.transform is not None else sample


class VolumeSliceDataset(_VolumeDataset):
    """Every axial slice of the selected volumes: ``image [1, Y, X]``, with ``z``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        counts = np.array([shape[0] for shape in self.shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def blocks(self, slices_per_block: int = 16) -> list[tuple[int, int]]:
        """Runs of neighbouring slices (one contiguous read each) for :class:`BlockShuffleSampler`."""
        out = []
        for k in range(len(self.volume_ids)):
            start, stop = int(self.offsets[k]), int(self.offsets[k + 1])
            out.extend((a, min(a + slices_per_block, stop)) for a in range(start, stop, slices_per_block))
        return out

    def _item(self, index: int) -> dict:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        z = int(index - self.offsets[k])
        return self._sample(k, (z,), z=z)


class VolumePatchDataset(_VolumeDataset):
    """Random 3D patches: ``patches_per_volume`` items per volume, each at a fresh random position
    (so epochs differ), zero-padded where a volume is smaller than ``patch_size`` (z, y, x)."""

    def __init__(self, *args, patch_size: Sequence[int] = (96, 96, 96), patches_per_volume: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patches_per_volume = patches_per_volume

    def __len__(self) -> int:
        return len(self.volume_ids) * self.patches_per_volume

    def blocks(self) -> list[tuple[int, int]]:
        """One block per volume (its patches), for :class:`BlockShuffleSampler`."""
        n = self.patches_per_volume
        return [(k * n, (k + 1) * n) for k in range(len(self.volume_ids))]

    def _item(self, index: int) -> dict:
        k = index // self.patches_per_volume
        shape = self.shapes[k]
        start = [int(torch.randint(0, max(0, n - p) + 1, ())) for n, p in zip(shape, self.patch_size)]
        region = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
        return self._sample(k, region, pad_to=self.patch_size, start=torch.tensor(start))


class VolumeStackDataset(_VolumeDataset):
    """Whole volumes as stacks of axial slices, ``image [1, Z, Y, X]`` (the joint 2D/3D view), or a
    random window of ``depth`` consecutive slices when ``depth`` is set (to bound memory)."""

    def __init__(self, *args, depth: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.depth = depth

    def __len__(self) -> int:
        return len(self.volume_ids)

    def blocks(self) -> list[tuple[int, int]]:
        return [(k, k + 1) for k in range(len(self.volume_ids))]

    def _item(self, index: int) -> dict:
        z_total = self.shapes[index][0]
        if self.depth is None or self.depth >= z_total:
            return self._sample(index, (slice(None),), z0=0)
        z0 = int(torch.randint(0, z_total - self.depth + 1, ()))
        return self._sample(index, (slice(z0, z0 + self.depth),), z0=z0)


class VolumePairDataset(_VolumeDataset):
    """Pairs of 3D crops showing the same anatomy (Alice), one pair per volume per epoch, from a
    :class:`~medssl.data.correspondence.CorrespondenceSampler`: ``views`` (two ``[1, D, H, W]`` crops) and
    ``points_a`` / ``points_b`` (``[K, 3]`` corresponding voxel positions in each crop). A sampler across
    patients gets a partner volume drawn from the others, seeded like everything else, among those with
    the same ``partners_by`` cache record (``modality`` by default: a brain MRI is not paired with a CT;
    None: any other volume; a volume alone in its group takes any other), and every sampler
    the two volumes' cache ids (``ids``). A sampler's ``matched`` and ``score`` (the embedding sampler's
    record of whether its match was kept) are passed on. ``transform``: what turns the crops into
    views (default :class:`~medssl.data.correspondence.PairViews`, the sampler's flips and turns; its
    device-views half for ``views_on="device"``)."""

    def __init__(self, *args, sampler, partners_by: str | None = "modality", **kwargs):
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        groups = [self.cache.metadata(v).get(partners_by) if partners_by else None for v in self.volume_ids]
        self.partners = partner_candidates(groups)

    def __len__(self) -> int:
        return len(self.volume_ids)

    def blocks(self) -> list[tuple[int, int]]:
        return [(k, k + 1) for k in range(len(self.volume_ids))]

    def _item(self, index: int) -> dict:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))  # from the seeded torch stream
        others = self.partners[index]
        partner = int(rng.choice(others)) if others else index
        image = self.cache.image(self.volume_ids[index])
        ids = (self.volume_ids[index], self.volume_ids[partner])
        pair = self.sampler.draw_pair(image, self.cache.image(ids[1]), rng, ids=ids)
        sample = {
            "views": [pair["view_a"], pair["view_b"]],
            PAIR_AUGMENTS: pair_augments(pair),
            "points_a": torch.as_tensor(pair["points_a"], dtype=torch.float32),
            "points_b": torch.as_tensor(pair["points_b"], dtype=torch.float32),
            "volume_id": ids[0],
            "partner_id": ids[1],
            **{key: pair[key] for key in ("matched", "score") if key in pair},
        }
        return (self.transform or PairViews())(sample)  # the crops' flips and turns


def partner_candidates(groups: Sequence) -> list[list[int]]:
    """For item ``k``, the other items of its group (``groups[k]``), or every other item when it is
    alone in its group: where a cross-patient pair may find its partner."""
    everyone = range(len(groups))
    same = [[j for j in everyone if j != k and groups[j] == groups[k]] for k in everyone]
    return [mates or [j for j in everyone if j != k] for k, mates in enumerate(same)]
