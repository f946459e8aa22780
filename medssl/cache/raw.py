"""Fast reads from a cache, bypassing zarr-python where the on-disk layout allows.

zarr-python spends about a millisecond per chunk access, which caps a loader near 1,000 tiles/s per
core. An uncompressed tile array (``medssl tile --codec raw``, the default) is a set of chunk files that
each hold ``chunk_tiles`` raw C-order tiles, so a tile is one ``os.pread`` of a known byte range. The
reader checks the array's metadata for exactly that layout and otherwise falls back to Zarr. Files are
opened per read call (a few microseconds), so readers hold no handles and copy freely into workers.

Uncompressed single-shard volume arrays are memory-mapped the same way (:func:`raw_shard_memmap`).
Both read an array's ``zarr.json`` through :func:`array_metadata`, the one place that parses it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore


def array_metadata(array_dir: str | os.PathLike) -> dict:
    """The Zarr v3 metadata document (``zarr.json``) of one array folder."""
    return json.loads((Path(array_dir) / "zarr.json").read_text())


class TileReader:
    """Pixels of one ``tiles`` array (``uint8 [N, T, T, 3]``) by index."""

    def __init__(self, array_dir: str | os.PathLike):
        self.array_dir = Path(array_dir)
        meta = array_metadata(self.array_dir)
        self.shape = tuple(meta["shape"])
        self.tile_shape = self.shape[1:]
        self.tile_bytes = int(np.prod(self.tile_shape))
        self.chunk_tiles = _raw_chunk_tiles(meta)
        self._array: zarr.Array | None = None

    @property
    def fast(self) -> bool:
        """True when tiles are read with ``os.pread`` from raw chunk files."""
        return self.chunk_tiles is not None

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """``uint8 [len(indices), T, T, 3]``, in the order given; into ``out`` (C-contiguous) if given,
        so a batch can be read straight into shared memory with no further copy."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.shape[0]):
            raise IndexError(f"tile index out of range for {self.array_dir} with {self.shape[0]} tiles")
        if out is None:
            out = np.empty((len(indices), *self.tile_shape), dtype=np.uint8)
        if self.chunk_tiles is None:  # not fast: read through Zarr
            out[...] = self._zarr().get_orthogonal_selection((indices,))
            return out
        flat = out.reshape(len(indices), -1)
        chunks, within = np.divmod(indices, self.chunk_tiles)
        for chunk in np.unique(chunks):
            rows = np.flatnonzero(chunks == chunk)
            path = self.array_dir / "c" / str(int(chunk)) / "0" / "0" / "0"
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # a chunk Zarr never wrote holds the fill value
                flat[rows] = 0
                continue
            try:
                for row in rows:
                    got = os.preadv(fd, [flat[row]], int(within[row]) * self.tile_bytes)
                    if got != self.tile_bytes:
                        raise OSError(f"{path}: short read ({got} of {self.tile_bytes} bytes); the cache is damaged")
            finally:
                os.close(fd)
        return out

    def _zarr(self) -> zarr.Array:
        if self._array is None:
            self._array = zarr.open_array(self.array_dir, mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}  # a Zarr handle is reopened in each worker


def chunk_rows(meta: dict) -> int:
    """Rows (first-axis length) of one chunk of an array, from its metadata: the inner chunk when the
    array is sharded, as zarr-python's ``Array.chunks`` reports it."""
    codecs = meta.get("codecs") or []
    if codecs and codecs[0].get("name") == "sharding_indexed":
        return int(codecs[0]["configuration"]["chunk_shape"][0])
    return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])


def slab_writer(array: zarr.Array) -> Callable[[int, np.ndarray], None]:
    """A function ``write(start, tiles)`` that stores ``tiles`` at ``array[start:]``.

    For an uncompressed tile array on a local store (the layout :class:`TileReader` reads directly),
    each whole chunk is written as its file with one ``write`` from the caller's buffer, byte for byte
    what Zarr writes (the last chunk padded with the fill value 0), without Zarr's per-chunk copies
    and event-loop round trips; ``start`` must then be chunk-aligned. Any other array is written
    through Zarr.
    """
    chunk_dir = _raw_local_dir(array)
    if chunk_dir is None:

        def through_zarr(start: int, tiles: np.ndarray) -> None:
            array[start : start + len(tiles)] = tiles

        return through_zarr
    chunk_tiles = int(array.chunks[0])
    total = int(array.shape[0])

    def direct(start: int, tiles: np.ndarray) -> None:
        if start % chunk_tiles or (start + len(tiles) != total and len(tiles) % chunk_tiles):
            raise ValueError(f"{chunk_dir}: tiles {start}..{start + len(tiles)} are not whole chunks")
        flat = np.ascontiguousarray(tiles).reshape(len(tiles), -1)
        for first in range(0, len(tiles), chunk_tiles):
            chunk = flat[first : first + chunk_tiles]
            _write_chunk(chunk_dir / "c" / str((start + first) // chunk_tiles) / "0" / "0" / "0", chunk, chunk_tiles)

    return direct


def _raw_local_dir(array: zarr.Array) -> Path | None:
    """The folder of ``array`` when it is raw tile chunks with fill value 0 on a local store, else None."""
    store = array.store
    if not isinstance(store, LocalStore):
        return None
    folder = Path(store.root) / array.path
    try:
        meta = array_metadata(folder)
    except (OSError, ValueError):
        return None
    if _raw_chunk_tiles(meta) is None or meta.get("fill_value") != 0:
        return None
    return folder


def _write_chunk(path: Path, rows: np.ndarray, chunk_tiles: int) -> None:
    """One chunk file, through a temporary name as Zarr does; a short last chunk is padded with zeros."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    with open(temporary, "wb") as handle:
        handle.write(rows.data)  # contiguous rows of the caller's buffer: no copy
        if len(rows) < chunk_tiles:
            handle.write(bytes((chunk_tiles - len(rows)) * rows.shape[1]))
    os.replace(temporary, path)


def _raw_chunk_tiles(meta: dict) -> int | None:
    """Tiles per chunk when the array is plain uncompressed chunks of whole tiles, else None."""
    try:
        chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        if (
            meta["data_type"] == "uint8"
            and meta["codecs"] == [{"name": "bytes"}]
            and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
            and chunk[1:] == tuple(meta["shape"][1:])
            and not meta.get("storage_transformers")
        ):
            return int(chunk[0])
    except (KeyError, TypeError):
        pass
    return None


def raw_shard_memmap(array_dir: Path) -> np.memmap | None:
    """A zero-copy view of an uncompressed single-shard array whose inner chunks lie in order.

    Zarr v3 stores such a shard as the raw C-order bytes of each inner chunk followed by an index; when
    the index says chunk k sits at byte k × chunk_bytes, the file *is* the array. Anything else (other
    codecs, several shards, chunks out of order) returns None and the caller reads through Zarr.
    """
    try:
        meta = array_metadata(array_dir)
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
