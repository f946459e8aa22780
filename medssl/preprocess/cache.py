"""The medssl Zarr cache: schema, safe writes (staging → commit), parameter checks, and readers.

Layout of one cache folder (``medssl tile --out DIR``)::

    DIR/cache.zarr/                 Zarr v3 store; root attrs["medssl"] = schema + parameters per kind
        slides/<slide_id>/          complete slides only (a group appears here by atomic rename)
            tiles      uint8 [N, T, T, 3]     tile pixels at the target MPP
            coords     int64 [N, 2]           level-0 (x, y) of each tile's top-left corner
            grid       int32 [N, 2]           (column, row) in the target-resolution tile grid
            tissue     float32 [N]            tissue fraction of each tile
            thumbnail  uint8 [h, w, 3]        whole slide at attrs.thumbnail_mpp
            tissue_mask bool [h, w]           tissue mask on the thumbnail
        staging/<id>/               work in progress; never read, wiped on resume
    DIR/manifest.csv                one row per input of the last run (status, reason, tiles, seconds)
    DIR/qc/<slide_id>.png           kept tiles drawn over the thumbnail

See docs/cache.md for every attribute. The schema version changes whenever a reader written for the
previous version would misread a cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import medssl
from medssl.errors import CacheError

SCHEMA_VERSION = 1
STORE_NAME = "cache.zarr"
STAGING = "staging"
_TRASH = "trash"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def store_path(out: str | os.PathLike) -> Path:
    """The Zarr store inside a cache folder (also accepts the store path itself)."""
    out = Path(out)
    return out if out.suffix == ".zarr" else out / STORE_NAME


def check_item_id(item_id: str, source: str = "") -> str:
    """IDs become Zarr group names and file names: letters, digits, '.', '_', '-' only."""
    if not _ID_PATTERN.match(item_id or ""):
        where = f" (from {source})" if source else ""
        raise CacheError(
            f"id {item_id!r}{where} is not usable as a cache key; use letters, digits, '.', '_' or '-'"
        )
    return item_id


def jsonable(value: Any) -> Any:
    """Normalise a parameter dict through JSON so comparisons see what the store will hold."""
    return json.loads(json.dumps(value))


def stored_params(out: str | os.PathLike, kind: str) -> dict | None:
    """The parameters a cache's items of ``kind`` were made with, or None if there are none yet."""
    path = store_path(out)
    if not (path / "zarr.json").exists():
        return None
    meta = dict(zarr.open_group(path, mode="r", zarr_format=3).attrs.get("medssl", {}))
    return meta.get("kinds", {}).get(kind, {}).get("params")


def open_for_writing(out: str | os.PathLike, kind: str, params: Mapping, overwrite: bool = False) -> zarr.Group:
    """Open (or create) the cache store for writing items of ``kind`` ("slides", "volumes", ...).

    A store made with different ``params`` for the same kind is refused, naming each differing key,
    unless ``overwrite`` is set, in which case that kind's items are deleted first.
    """
    path = store_path(out)
    params = jsonable(dict(params))
    if path.exists() and not (path / "zarr.json").exists():
        raise CacheError(f"{path}: exists but is not a Zarr store; choose another --out")
    root = zarr.open_group(path, mode="a", zarr_format=3)
    meta = dict(root.attrs.get("medssl", {}))
    if meta and meta.get("schema_version") != SCHEMA_VERSION:
        raise CacheError(
            f"{path}: cache schema v{meta.get('schema_version')} but this medssl writes "
            f"v{SCHEMA_VERSION}; write to a new --out or pass --overwrite"
        )
    kinds = dict(meta.get("kinds", {}))
    previous = kinds.get(kind, {}).get("params")
    if previous is not None and previous != params:
        if not overwrite:
            raise CacheError(
                f"{path}: was built with different {kind} parameters ({describe_changes(previous, params)}); "
                "re-run with the same parameters to resume, pass --overwrite to rebuild, or choose another --out"
            )
        for group in (kind, f"{STAGING}/{kind}"):
            if (path / group).exists():
                shutil.rmtree(path / group)
    kinds[kind] = {"params": params}
    root.attrs["medssl"] = {
        "schema_version": SCHEMA_VERSION,
        "medssl_version": medssl.__version__,
        "kinds": kinds,
    }
    root.require_group(kind)
    root.require_group(STAGING).require_group(kind)
    return root


def describe_changes(old: Mapping, new: Mapping, prefix: str = "") -> str:
    """'tile_size: 224 -> 256, tissue.min_saturation: 15 -> 20' for nested dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            nested = describe_changes(a, b, f"{prefix}{key}.")
            if nested:
                changes.append(nested)
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return ", ".join(changes)


def complete_attrs(root: zarr.Group, kind: str, item_id: str) -> dict | None:
    """The attrs of a committed item, or None if it is absent."""
    try:
        group = root[f"{kind}/{item_id}"]
    except KeyError:
        return None
    attrs = dict(group.attrs)
    return attrs if attrs.get("status") == "complete" else None


def unchanged_item(root: zarr.Group, kind: str, item_id: str, source: Mapping) -> dict | None:
    """The attrs of a committed item made from exactly ``source`` (its fingerprint), else None."""
    previous = complete_attrs(root, kind, item_id)
    return previous if previous is not None and previous.get("source") == jsonable(dict(source)) else None


@contextmanager
def staged_item(root: zarr.Group, kind: str, item_id: str) -> Iterator[zarr.Group]:
    """A fresh staging group to write one item into; discarded if the block raises."""
    group = begin_item(root, kind, item_id)
    try:
        yield group
    except BaseException:
        discard_item(root, kind, item_id)
        raise


def begin_item(root: zarr.Group, kind: str, item_id: str) -> zarr.Group:
    """A fresh staging group for one item; any leftover from an interrupted run is discarded."""
    staging = Path(root.store.root) / STAGING / kind / item_id
    if staging.exists():
        shutil.rmtree(staging)
    return root.require_group(STAGING).require_group(kind).create_group(item_id)


def discard_item(root: zarr.Group, kind: str, item_id: str) -> None:
    """Drop an item's staging group (after a failure); committed data is untouched."""
    staging = Path(root.store.root) / STAGING / kind / item_id
    shutil.rmtree(staging, ignore_errors=True)


def commit_item(root: zarr.Group, kind: str, item_id: str, attrs: Mapping) -> None:
    """Mark a staged item complete and move it into place with atomic renames.

    The old committed version, if any, is moved aside first and deleted only after the new one is in
    place, so a kill at any moment leaves either the old complete item or the new one.
    """
    base = Path(root.store.root)
    group = zarr.open_group(base / STAGING / kind / item_id, mode="r+")
    group.attrs.update(jsonable({**attrs, "status": "complete"}))
    final = base / kind / item_id
    trash = None
    if final.exists():
        trash = base / _TRASH / f"{kind}-{item_id}-{uuid.uuid4().hex}"
        trash.parent.mkdir(exist_ok=True)
        os.replace(final, trash)
    os.replace(base / STAGING / kind / item_id, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


class CacheReader:
    """Read-only access to the items of one kind in a cache folder; subclasses add kind-specific views."""

    kind: str = ""

    def __init__(self, path: str | os.PathLike):
        self.path = store_path(path)
        if not (self.path / "zarr.json").exists():
            raise CacheError(f"{self.path}: not a medssl cache (no zarr.json); run medssl tile first")
        self.root = zarr.open_group(self.path, mode="r", zarr_format=3)
        meta = dict(self.root.attrs.get("medssl", {}))
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise CacheError(
                f"{self.path}: cache schema v{meta.get('schema_version')} is not v{SCHEMA_VERSION}; "
                "rebuild it with this medssl version"
            )
        if self.kind not in meta.get("kinds", {}):
            raise CacheError(f"{self.path}: holds no {self.kind}; it has {sorted(meta.get('kinds', {}))}")
        self.meta = meta
        self._group = self.root[self.kind]

    @property
    def params(self) -> dict:
        """The preprocessing parameters every item of this kind was made with."""
        return dict(self.meta["kinds"][self.kind]["params"])

    @property
    def ids(self) -> list[str]:
        """IDs of complete items, sorted."""
        return sorted(name for name, _ in self._group.groups())

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._group

    def group(self, item_id: str) -> zarr.Group:
        try:
            return self._group[item_id]
        except KeyError:
            raise CacheError(f"{self.path}: no complete {self.kind[:-1]} {item_id!r}") from None

    def metadata(self, item_id: str) -> dict:
        """Everything recorded about one item: source fingerprint, resolution, label, counts."""
        return dict(self.group(item_id).attrs)

    def manifest(self) -> list[dict]:
        """One row per complete item, from the attrs (the authoritative record)."""
        return [self.metadata(item_id) for item_id in self.ids]


class SlideCache(CacheReader):
    """Tiles of the slides in a cache written by ``medssl tile``.

    >>> cache = SlideCache("cohort/")            # doctest: +SKIP
    >>> cache.ids, cache.tiles("slide-1")[0:8], cache.coords("slide-1")   # doctest: +SKIP
    """

    kind = "slides"

    def tiles(self, slide_id: str) -> zarr.Array:
        """``uint8 [N, T, T, 3]`` lazily; index it to read pixels."""
        return self.group(slide_id)["tiles"]

    def coords(self, slide_id: str) -> np.ndarray:
        """Level-0 (x, y) top-left corner of every tile."""
        return self.group(slide_id)["coords"][:]

    def grid(self, slide_id: str) -> np.ndarray:
        return self.group(slide_id)["grid"][:]

    def tissue(self, slide_id: str) -> np.ndarray:
        return self.group(slide_id)["tissue"][:]

    def thumbnail(self, slide_id: str) -> np.ndarray:
        return self.group(slide_id)["thumbnail"][:]

    def tissue_mask(self, slide_id: str) -> np.ndarray:
        return self.group(slide_id)["tissue_mask"][:]

    def num_tiles(self, slide_id: str) -> int:
        return int(self.tiles(slide_id).shape[0])


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
        self._arrays: dict[tuple[str, str], Any] = {}

    def image(self, volume_id: str):
        """The whole normalised volume ``[Z, Y, X]`` (a memory map or a lazy Zarr array)."""
        return self._array(volume_id, "image")

    def label(self, volume_id: str):
        """The label map ``[Z, Y, X]``, or None when the volume was cached without one."""
        if "label" not in self.group(volume_id):
            return None
        return self._array(volume_id, "label")

    def slice(self, volume_id: str, z: int, key: str = "image") -> np.ndarray:
        return np.asarray(self._array(volume_id, key)[z])

    def patch(self, volume_id: str, start: tuple[int, int, int], size: tuple[int, int, int], key: str = "image") -> np.ndarray:
        (z, y, x), (dz, dy, dx) = start, size
        return np.asarray(self._array(volume_id, key)[z : z + dz, y : y + dy, x : x + dx])

    def shape(self, volume_id: str) -> tuple[int, int, int]:
        return tuple(self.metadata(volume_id)["shape"])

    def _array(self, volume_id: str, key: str):
        cached = self._arrays.get((volume_id, key))
        if cached is None:
            array = self.group(volume_id)[key]
            mapped = raw_shard_memmap(self.path / self.kind / volume_id / key)
            cached = array if mapped is None else mapped
            self._arrays[(volume_id, key)] = cached
        return cached


def raw_shard_memmap(array_dir: Path) -> np.memmap | None:
    """A zero-copy view of an uncompressed single-shard array whose inner chunks lie in order.

    Zarr v3 stores such a shard as the raw C-order bytes of each inner chunk followed by an index; when
    the index says chunk k sits at byte k × chunk_bytes, the file *is* the array. Anything else (other
    codecs, several shards, chunks out of order) returns None and the caller reads through Zarr.
    """
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
        shape = tuple(meta["shape"])
        (sharding,) = meta["codecs"]
        config = sharding["configuration"]
        inner = tuple(config["chunk_shape"])
        if (
            sharding["name"] != "sharding_indexed"
            or tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]) != shape
            or config["codecs"] not in ([{"name": "bytes", "configuration": {"endian": "little"}}], [{"name": "bytes"}])
            or config.get("index_location", "end") != "end"
            or meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}
            or inner[1:] != shape[1:]
        ):
            return None
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        path = array_dir / "c" / "/".join("0" * len(shape))
        n_chunks = -(-shape[0] // inner[0])
        chunk_bytes = int(np.prod(inner)) * dtype.itemsize
        index_bytes = n_chunks * 16 + (4 if any(c["name"] == "crc32c" for c in config["index_codecs"]) else 0)
        size = path.stat().st_size
        index = np.fromfile(path, dtype="<u8", count=2 * n_chunks, offset=size - index_bytes).reshape(n_chunks, 2)
        expected = np.arange(n_chunks, dtype=np.uint64) * chunk_bytes
        if not (np.array_equal(index[:, 0], expected) and (index[:, 1] == chunk_bytes).all()):
            return None
        if shape[0] % inner[0]:
            return None
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)
    except (OSError, KeyError, ValueError, TypeError):
        return None
