"""Map-style datasets over the medssl caches; samples are MONAI-style dictionaries.

A tile sample is ``{"image": uint8 Tensor[3, T, T], "slide_id": str, "tile": int, "coords": int64
Tensor[2], "label": int}`` (``label`` is the slide's class index, -1 when it has none). ``transform``
receives the whole dictionary, so MONAI's dictionary transforms and medssl's compose.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medssl.cache import SlideCache, TileReader
from medssl.data.seeding import Key, seeded, split_key


def matches(meta: dict, key: str, allowed: Iterable[str] | None) -> bool:
    """Whether an item's metadata ``key`` is among ``allowed`` (None allows everything): the filter of
    every cache dataset."""
    return allowed is None or str(meta.get(key, "")) in {str(a) for a in allowed}


class TileDataset(Dataset):
    """Every tile of the selected slides of a tile cache.

    Filters: ``slide_ids``, ``splits``, ``labels`` and ``stains`` keep slides whose attribute is in the
    given set (only complete slides are ever listed). ``classes`` fixes the label → index mapping
    (default: sorted labels of the selected slides). Batched fetching (``__getitems__``) reads each
    slide's tiles in one pass. Keys may be ``(index, epoch)`` pairs, which fix the sample's random
    views from ``seed`` (:mod:`medssl.data.seeding`).
    """

    def __init__(
        self,
        cache: str | os.PathLike | SlideCache,
        slide_ids: Sequence[str] | None = None,
        splits: Iterable[str] | None = None,
        labels: Iterable[str] | None = None,
        stains: Iterable[str] | None = None,
        classes: Sequence[str] | None = None,
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
    ):
        self.cache = cache if isinstance(cache, SlideCache) else SlideCache(cache)
        self.seed = seed
        every = self.cache.items()  # one scan: attrs of all slides (fast at 10,000 slides)
        chosen = []
        for slide_id in slide_ids if slide_ids is not None else every:
            meta = every[slide_id] if slide_id in every else self.cache.metadata(slide_id)  # absent: its error
            if matches(meta, "split", splits) and matches(meta, "label", labels) and matches(meta, "stain", stains):
                chosen.append((slide_id, meta))
        self.slide_ids = [slide_id for slide_id, _ in chosen]
        found = sorted({str(m["label"]) for _, m in chosen if m.get("label") not in (None, "")})
        self.classes = list(classes) if classes is not None else found
        class_index = {name: k for k, name in enumerate(self.classes)}
        self.slide_labels = np.array([class_index.get(str(m.get("label")), -1) for _, m in chosen], dtype=np.int64)
        # Lengths from the recorded num_tiles: no tiles array is opened to build the index.
        counts = np.array([int(m["num_tiles"]) for _, m in chosen], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self._chunk_tiles: list[int] | None = None
        self.transform = transform
        self._readers: dict[int, TileReader] = {}
        self._coords: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int | Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slide position, tile index within that slide) of global indices."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} tiles")
        slide = np.searchsorted(self.offsets, index, side="right") - 1
        return slide, index - self.offsets[slide]

    @property
    def chunk_tiles(self) -> list[int]:
        """Tiles per storage chunk of each selected slide, read from the arrays' metadata on first use."""
        if self._chunk_tiles is None:
            self._chunk_tiles = [self.cache.chunk_tiles(s) for s in self.slide_ids]
        return self._chunk_tiles

    def blocks(self) -> list[tuple[int, int]]:
        """Index ranges that share a storage chunk: the units :class:`BlockShuffleSampler` shuffles."""
        out = []
        for k, chunk in enumerate(self.chunk_tiles):
            start, stop = int(self.offsets[k]), int(self.offsets[k + 1])
            out.extend((a, min(a + chunk, stop)) for a in range(start, stop, chunk))
        return out

    def __getitem__(self, key: Key) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Key]) -> list[dict]:
        indices, epochs = zip(*map(split_key, keys)) if len(keys) else ((), ())
        slides, tiles = self.locate(indices)
        images: list[np.ndarray | None] = [None] * len(slides)
        for slide in np.unique(slides):
            rows = np.flatnonzero(slides == slide)
            pixels = self.reader(int(slide)).read(tiles[rows])
            for row, tile in zip(rows, pixels):
                images[row] = tile
        samples = []
        for index, epoch, slide, tile, image in zip(indices, epochs, slides, tiles, images):
            if image is None:  # cannot happen: every index lies in one slide, whose tiles were all read
                raise RuntimeError(f"tile {int(tile)} of slide {self.slide_ids[slide]!r} was not read")
            sample = {
                "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "slide_id": self.slide_ids[slide],
                "tile": int(tile),
                "coords": torch.from_numpy(self.coords_of(int(slide))[tile]),
                "label": int(self.slide_labels[slide]),
            }
            if self.transform is not None:
                with seeded(self.transform, self.seed, epoch, index):
                    sample = self.transform(sample)
            samples.append(sample)
        return samples

    def read_batch(self, keys: Sequence[Key]) -> dict:
        """A whole batch at once, for throughput: ``image`` is ``uint8 [B, 3, T, T]`` in channels-last
        memory (a view of the ``[B, T, T, 3]`` tiles, which convolutions take as they are; no
        transpose copy), read straight into shared memory so DataLoader workers hand it over
        without copying. ``transform`` is not applied here: augment the batch on the device."""
        slides, tiles = self.locate([split_key(key)[0] for key in keys])
        tile_shape = self.reader(int(slides[0])).tile_shape if len(slides) else (0, 0, 3)
        pixels = torch.empty((len(slides), *tile_shape), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            pixels.share_memory_()
        buffer = pixels.numpy()
        for slide in np.unique(slides):
            rows = np.flatnonzero(slides == slide)
            if len(rows) == rows[-1] - rows[0] + 1:  # contiguous rows: read in place
                self.reader(int(slide)).read(tiles[rows], out=buffer[rows[0] : rows[-1] + 1])
            else:
                buffer[rows] = self.reader(int(slide)).read(tiles[rows])
        return {
            "image": pixels.permute(0, 3, 1, 2),
            "slide": torch.from_numpy(slides),
            "tile": torch.from_numpy(tiles),
            "label": torch.from_numpy(self.slide_labels[slides]),
        }

    def batches(self) -> "TileBatches":
        """This dataset as one whose items are whole batches; use with ``batch_size=None`` and a
        ``BatchSampler``, or :func:`batch_loader`."""
        return TileBatches(self)

    def reader(self, slide: int) -> TileReader:
        """The pixel reader of the slide at position ``slide`` (opened once, kept)."""
        reader = self._readers.get(slide)
        if reader is None:
            reader = self._readers[slide] = self.cache.tile_reader(self.slide_ids[slide])
        return reader

    def coords_of(self, slide: int) -> np.ndarray:
        """Level-0 (x, y) corners of every tile of the slide at position ``slide`` (read once, kept)."""
        coords = self._coords.get(slide)
        if coords is None:
            coords = self._coords[slide] = self.cache.coords(self.slide_ids[slide])
        return coords


class TileBatches(Dataset):
    """Items are batches: ``dataset[list_of_indices]`` is :meth:`TileDataset.read_batch`."""

    def __init__(self, tiles: TileDataset):
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, indices: Sequence[int]) -> dict:
        return self.tiles.read_batch(indices)


def batch_loader(
    dataset: TileDataset, sampler, batch_size: int, num_workers: int = 0, drop_last: bool = False, **kwargs
):
    """A DataLoader that reads whole batches (see :meth:`TileDataset.read_batch`) in sampler order."""
    from torch.utils.data import BatchSampler, DataLoader

    return DataLoader(
        dataset.batches(),
        batch_size=None,
        sampler=BatchSampler(sampler, batch_size, drop_last),
        num_workers=num_workers,
        **kwargs,
    )


class ThreadedBatchLoader:
    """Whole batches read by a pool of threads in the training process, in sampler order.

    Tile reads are ``os.preadv`` calls that release the GIL, so threads overlap them without worker
    processes, and batches need no shared-memory hand-over (which halves throughput with processes).
    Use it when augmentation runs on the device; per-sample CPU augmentation needs worker processes
    (:func:`batch_loader` or a DataLoader). ``sampler.set_epoch`` is reachable as Lightning expects.
    """

    def __init__(
        self,
        dataset: TileDataset,
        sampler,
        batch_size: int,
        threads: int = 2,
        prefetch: int = 4,
        drop_last: bool = False,
    ):
        from torch.utils.data import BatchSampler

        self.dataset, self.sampler = dataset, sampler
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.threads, self.prefetch = max(1, threads), max(1, prefetch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="medssl-tiles") as pool:
            pending: deque = deque()
            for indices in self.batch_sampler:
                pending.append(pool.submit(self.dataset.read_batch, indices))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
