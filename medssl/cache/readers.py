"""Read-only views of a medssl cache, one class per kind of item: :class:`SlideCache` (``medssl tile``),
:class:`VolumeCache` (``medssl cache-volumes``) and :class:`EmbeddingCache` (``medssl embed``).

Every reader checks the schema version and lists complete items only; the paths inside the store are
known here and in :mod:`medssl.cache.store` alone.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import zarr

from medssl.cache import nodes
from medssl.cache.raw import TileReader, array_metadata, chunk_rows, raw_shard_memmap
from medssl.cache.store import SCHEMA_VERSION, is_store, item_attrs, store_meta, store_path
from medssl.errors import CacheError


def _child_group(parent: zarr.Group, name: str) -> zarr.Group:
    """The subgroup ``name`` of ``parent``; a clear error when the store holds an array there."""
    child = parent[name]
    if not isinstance(child, zarr.Group):
        raise CacheError(f"{parent.store_path}/{name}: expected a Zarr group, found an array; the cache is damaged")
    return child


def _child_array(parent: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``parent``; a clear error when the store holds a group there."""
    child = parent[name]
    if not isinstance(child, zarr.Array):
        raise CacheError(f"{parent.store_path}/{name}: expected a Zarr array, found a group; the cache is damaged")
    return child


def read_manifests(folder: str | os.PathLike) -> dict[str, dict]:
    """The rows of a cache folder's run manifests (``manifest.csv`` and ``manifest.shard-i-of-n.csv``,
    written by ``medssl tile`` / ``medssl cache-volumes``), by id: what the last run did to each input
    (``status`` done / skipped / failed, and the ``reason``). Files are read oldest first, so a later
    run's row wins; an empty dict when the folder has none (a cache copied without them)."""
    folder = Path(folder)
    paths = sorted([*folder.glob("manifest.csv"), *folder.glob("manifest.shard-*-of-*.csv")], key=_mtime)
    rows: dict[str, dict] = {}
    for path in paths:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"id", "status"} <= set(reader.fieldnames):
                columns = reader.fieldnames
                raise CacheError(f"{path}: not a medssl manifest (needs columns id and status, has {columns})")
            rows.update((row["id"], row) for row in reader)
    return rows


def _mtime(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, path.name


class CacheReader:
    """Read-only access to the items of one kind in a cache folder; subclasses add kind-specific views."""

    kind: str = ""
    missing_hint: str = "run medssl tile first"  #: what to run when the folder is not a cache

    def __init__(self, path: str | os.PathLike):
        self.path = store_path(path)
        if not is_store(self.path):
            raise CacheError(f"{self.path}: not a medssl cache (no zarr.json); {self.missing_hint}")
        self.root = zarr.open_group(self.path, mode="r", zarr_format=3)
        meta = store_meta(self.path)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise CacheError(
                f"{self.path}: cache schema v{meta.get('schema_version')} is not v{SCHEMA_VERSION}; "
                "rebuild it with this medssl version"
            )
        if self.kind not in meta.get("kinds", {}):
            raise CacheError(
                f"{self.path}: holds no {self.kind}; it has {sorted(meta.get('kinds', {}))}; {self.missing_hint}"
            )
        self.meta = meta
        self._group = _child_group(self.root, self.kind)

    @property
    def params(self) -> dict:
        """The preprocessing parameters every item of this kind was made with."""
        return dict(self.meta["kinds"][self.kind]["params"])

    def items(self) -> dict[str, dict]:
        """``{id: attrs}`` of every complete item, sorted by id, from one scan of the store: the way to
        look at every item's metadata at once (one small JSON read each, fast at 10,000 items)."""
        return item_attrs(self.path, self.kind)

    @property
    def ids(self) -> list[str]:
        """IDs of complete items, sorted."""
        return list(self.items())

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return nodes.group_attrs(self.path / self.kind / item_id) is not None

    def group(self, item_id: str) -> zarr.Group:
        try:
            return _child_group(self._group, item_id)
        except KeyError:
            raise CacheError(f"{self.path}: no complete {self.kind[:-1]} {item_id!r}") from None

    def metadata(self, item_id: str) -> dict:
        """Everything recorded about one item: source fingerprint, resolution, label, counts."""
        attrs = nodes.group_attrs(self.path / self.kind / item_id)
        if attrs is None:
            self._absent(item_id)
        return attrs

    def _absent(self, item_id: str) -> NoReturn:
        """The clear error for an id that names no complete item (absent, or an array where a group
        should be)."""
        self.group(item_id)
        raise CacheError(f"{self.path}/{self.kind}/{item_id}: not a Zarr group; the cache is damaged")

    def _require(self, item_id: str) -> None:
        """Refuse an id that names no complete item, with one small file read."""
        if item_id not in self:
            self._absent(item_id)

    def manifest(self) -> list[dict]:
        """One row per complete item, from the attrs (the authoritative record)."""
        return list(self.items().values())


class SlideCache(CacheReader):
    """Tiles of the slides in a cache written by ``medssl tile``.

    >>> cache = SlideCache("cohort/")            # doctest: +SKIP
    >>> cache.ids, cache.tiles("slide-1")[0:8], cache.coords("slide-1")   # doctest: +SKIP
    """

    kind = "slides"

    def tiles(self, slide_id: str) -> zarr.Array:
        """``uint8 [N, T, T, 3]`` lazily; index it to read pixels."""
        return _child_array(self.group(slide_id), "tiles")

    def coords(self, slide_id: str) -> np.ndarray:
        """Level-0 (x, y) top-left corner of every tile."""
        return np.asarray(_child_array(self.group(slide_id), "coords")[:])

    def grid(self, slide_id: str) -> np.ndarray:
        return np.asarray(_child_array(self.group(slide_id), "grid")[:])

    def tissue(self, slide_id: str) -> np.ndarray:
        return np.asarray(_child_array(self.group(slide_id), "tissue")[:])

    def thumbnail(self, slide_id: str) -> np.ndarray:
        return np.asarray(_child_array(self.group(slide_id), "thumbnail")[:])

    def tissue_mask(self, slide_id: str) -> np.ndarray:
        return np.asarray(_child_array(self.group(slide_id), "tissue_mask")[:])

    def annotation_mask(self, slide_id: str) -> np.ndarray | None:
        """The rasterised annotations of a slide tiled with ``--annotations`` (thumbnail grid), else None."""
        group = self.group(slide_id)
        return np.asarray(_child_array(group, "annotation_mask")[:]) if "annotation_mask" in group else None

    def pen_mask(self, slide_id: str) -> np.ndarray:
        """Marker ink found on the thumbnail (excluded from the tissue mask); all False for slides tiled
        before ink detection existed."""
        group = self.group(slide_id)
        if "pen_mask" not in group:
            return np.zeros_like(self.tissue_mask(slide_id))
        return np.asarray(_child_array(group, "pen_mask")[:])

    def num_tiles(self, slide_id: str) -> int:
        return int(self.tiles(slide_id).shape[0])

    def chunk_tiles(self, slide_id: str) -> int:
        """Tiles per storage chunk of one slide's ``tiles`` (the inner chunk when sharded), from its
        metadata alone."""
        self._require(slide_id)
        return chunk_rows(array_metadata(self.path / self.kind / slide_id / "tiles"))

    def tile_reader(self, slide_id: str) -> TileReader:
        """The fast pixel reader of one slide's tiles (raw chunks by ``os.pread`` where the layout allows)."""
        self._require(slide_id)
        return TileReader(self.path / self.kind / slide_id / "tiles")


class VolumeCache(CacheReader):
    """Volumes of a cache written by ``medssl cache-volumes``, stored ``[Z, Y, X]`` (axial-slice-major,
    RAS: x left→right, y posterior→anterior, z inferior→superior).

    Uncompressed arrays are served as NumPy memory maps of the shard file (zero-copy, the speed of a
    plain ``.npy``); compressed ones through Zarr. Both index like arrays::

        cache = VolumeCache("ct-cache/")
        cache.slice("case_01", 40)                       # axial slice [Y, X]
        cache.patch("case_01", (10, 64, 64), (96, 96, 96))
        cache.label("case_01")[40], cache.metadata("case_01")["spacing"]
    """

    kind = "volumes"

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self._arrays: dict[tuple[str, str], np.ndarray | zarr.Array] = {}

    def image(self, volume_id: str) -> np.ndarray | zarr.Array:
        """The whole normalised volume ``[Z, Y, X]`` (a memory map or a lazy Zarr array)."""
        return self._array(volume_id, "image")

    def label(self, volume_id: str) -> np.ndarray | zarr.Array | None:
        """The label map ``[Z, Y, X]``, or None when the volume was cached without one."""
        if "label" not in self.group(volume_id):
            return None
        return self._array(volume_id, "label")

    def slice(self, volume_id: str, z: int, key: str = "image") -> np.ndarray:
        return np.asarray(self._array(volume_id, key)[z])

    def patch(
        self, volume_id: str, start: tuple[int, int, int], size: tuple[int, int, int], key: str = "image"
    ) -> np.ndarray:
        (z, y, x), (dz, dy, dx) = start, size
        return np.asarray(self._array(volume_id, key)[z : z + dz, y : y + dy, x : x + dx])

    def shape(self, volume_id: str) -> tuple[int, int, int]:
        z, y, x = self.metadata(volume_id)["shape"]
        return int(z), int(y), int(x)

    def _array(self, volume_id: str, key: str) -> np.ndarray | zarr.Array:
        cached = self._arrays.get((volume_id, key))
        if cached is None:
            array = _child_array(self.group(volume_id), key)
            mapped = raw_shard_memmap(self.path / self.kind / volume_id / key)
            cached = array if mapped is None else mapped
            self._arrays[(volume_id, key)] = cached
        return cached


DENSE_LEVELS = ("coarse", "fine")  #: the dense embedding maps of a volume (``medssl embed --dense``)
DENSE_NORMALISATIONS = ("l2", "none")  #: unit-length vectors, or raw ones a reader normalises


@dataclass(frozen=True)
class DenseMap:
    """One level of a volume's dense embedding (``medssl embed --dense``; layout in docs/cache.md).

    ``array`` is ``[C, ceil(Z/sz), ceil(Y/sy), ceil(X/sx)]`` (lazy); cell ``(i, j, k)`` summarises the
    volume voxels ``[i·sz, (i+1)·sz) × ...`` of the ``[Z, Y, X]`` volume, so its centre is the voxel
    position ``(i + 0.5)·s − 0.5`` per axis. ``normalised``: the vectors are unit length already."""

    array: zarr.Array
    stride: tuple[int, int, int]
    normalised: bool


def _dense_stride(value, where: str) -> tuple[int, int, int]:
    strides = [value] * 3 if isinstance(value, int) else list(value) if isinstance(value, list | tuple) else []
    if len(strides) != 3 or not all(isinstance(s, int) and s >= 1 for s in strides):
        raise CacheError(f"{where}: attrs 'stride' must be a positive int or 3 of them (z, y, x), got {value!r}")
    return strides[0], strides[1], strides[2]


class EmbeddingCache(CacheReader):
    """Features written by ``medssl embed``: one ``[N, D]`` array per slide (row i = tile i of the tile
    cache) or volume (row i = axial slice i), with the tiles' level-0 ``coords``; or, from
    ``medssl embed --dense`` (or an external model's arrays in the same layout), each volume's ``coarse``
    and ``fine`` dense maps (:meth:`dense`).

    >>> embeddings = EmbeddingCache("embeddings/")             # doctest: +SKIP
    >>> embeddings.features("slide-1")[:16], embeddings.params["encoder"]   # doctest: +SKIP
    """

    kind = "embeddings"

    def __init__(self, path: str | os.PathLike):
        self.missing_hint = f"not an embedding folder (run medssl embed --out {path})"
        super().__init__(path)

    def features(self, item_id: str) -> zarr.Array:
        """``float [N, D]`` lazily; index it (or ``get_orthogonal_selection``) to read rows."""
        return _child_array(self.group(item_id), "features")

    def coords(self, item_id: str) -> np.ndarray:
        """Level-0 (x, y) of each row's tile (slides only)."""
        return np.asarray(_child_array(self.group(item_id), "coords")[:])

    def require(self, item_ids: Sequence[str], noun: str = "slide", command: str = "medssl embed") -> "EmbeddingCache":
        """Refuse, naming them, when some of ``item_ids`` have no complete embeddings."""
        missing = [item_id for item_id in item_ids if item_id not in self]
        if missing:
            raise CacheError(
                f"{self.path.parent}: no embeddings for {len(missing)} {noun}(s) "
                f"({', '.join(missing[:5])}); run or resume {command} on this cache"
            )
        return self

    def volume_shape(self, volume_id: str) -> tuple[int, int, int]:
        """The ``[Z, Y, X]`` shape of the cached volume a dense embedding was made from (attrs ``shape``)."""
        shape = self.metadata(volume_id).get("shape")
        if not isinstance(shape, list | tuple) or len(shape) != 3:
            raise CacheError(
                f"{self.path}/{self.kind}/{volume_id}: attrs 'shape' must be the volume's [Z, Y, X], got {shape!r}"
            )
        return int(shape[0]), int(shape[1]), int(shape[2])

    def dense(self, volume_id: str) -> dict[str, DenseMap]:
        """The ``coarse`` and ``fine`` dense maps of one volume, checked against the documented layout
        (each a ``[C, *grid]`` array whose grid is ``ceil(shape / stride)``)."""
        group, where = self.group(volume_id), f"{self.path}/{self.kind}/{volume_id}"
        absent = [name for name in DENSE_LEVELS if name not in group]
        if absent:
            raise CacheError(
                f"{where}: no dense embeddings ({', '.join(absent)} missing); write them with medssl embed --dense"
            )
        shape = self.volume_shape(volume_id)
        maps = {}
        for name in DENSE_LEVELS:
            array = _child_array(group, name)
            stride = _dense_stride(array.attrs.get("stride"), f"{where}/{name}")
            normalisation = array.attrs.get("normalisation")
            if normalisation not in DENSE_NORMALISATIONS:
                allowed = " or ".join(DENSE_NORMALISATIONS)
                raise CacheError(f"{where}/{name}: attrs 'normalisation' must be {allowed}, got {normalisation!r}")
            grid = tuple(math.ceil(n / s) for n, s in zip(shape, stride, strict=True))
            if array.ndim != 4 or tuple(array.shape[1:]) != grid:
                raise CacheError(
                    f"{where}/{name}: shape {tuple(array.shape)}, expected [C, {', '.join(map(str, grid))}] "
                    f"(ceil of the volume's {list(shape)} / stride {list(stride)})"
                )
            maps[name] = DenseMap(array, stride, normalisation == "l2")
        return maps
