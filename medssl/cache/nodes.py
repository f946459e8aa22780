"""Zarr v3 nodes read and written with plain file I/O, for the per-item hot paths of big cohorts.

zarr-python does every metadata read and every small write through its event loop: a few milliseconds
of thread hand-over per call on a busy machine, and listing a group's members opens each child in turn.
That is nothing for one slide and tens of seconds for 10,000 (``medssl info``, a resumed run, building
a dataset). A node's whole state lives in its ``zarr.json`` (and, for an array, its chunk files), whose
format the Zarr v3 specification fixes, so the paths that run once per item use these functions; all
reads of pixels still go through Zarr or :mod:`medssl.cache.raw`. What is written here is an ordinary
Zarr v3 node that zarr-python (or any v3 reader) opens unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Zstd

METADATA = "zarr.json"
_ZSTD_LEVEL = 0  #: zarr-python's default compressor for numeric arrays: zstd level 0, no checksum


def read_node(node_dir: str | os.PathLike) -> dict | None:
    """The parsed ``zarr.json`` of a node folder, or None when there is none (not a Zarr node)."""
    try:  # os.path, not pathlib: this runs once per item of a 10,000-item cache
        with open(os.path.join(node_dir, METADATA), "rb") as handle:
            doc = json.load(handle)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return doc if isinstance(doc, dict) else None


def group_attrs(node_dir: str | os.PathLike) -> dict | None:
    """The attributes of the Zarr group at ``node_dir``; None when it is no group (absent, or an array)."""
    doc = read_node(node_dir)
    if doc is None or doc.get("node_type") != "group":
        return None
    return dict(doc.get("attributes") or {})


def list_groups(parent_dir: str | os.PathLike) -> dict[str, dict]:
    """``{name: attributes}`` of the child groups of ``parent_dir``, sorted by name: the members
    zarr-python's ``Group.groups()`` lists (folders holding a group ``zarr.json``), from one directory
    scan and one small JSON read each."""
    try:
        entries = list(os.scandir(parent_dir))
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        if entry.is_dir():
            attrs = group_attrs(entry.path)
            if attrs is not None:
                found[entry.name] = attrs
    return dict(sorted(found.items()))


def write_group(node_dir: str | os.PathLike, attrs: dict[str, Any] | None = None) -> Path:
    """Make (or overwrite) the Zarr group ``node_dir`` with ``attrs``, in one file write."""
    node_dir = Path(node_dir)
    node_dir.mkdir(parents=True, exist_ok=True)
    doc = {"attributes": attrs or {}, "zarr_format": 3, "node_type": "group"}
    (node_dir / METADATA).write_text(json.dumps(doc))
    return node_dir


def update_group_attrs(node_dir: str | os.PathLike, attrs: dict[str, Any]) -> None:
    """Merge ``attrs`` into the group's attributes with one read and one write (zarr-python's
    ``attrs.update`` rewrites ``zarr.json`` once per key)."""
    current = group_attrs(node_dir)
    if current is None:
        raise FileNotFoundError(f"{node_dir}: no Zarr group here")
    write_group(node_dir, {**current, **attrs})


def write_array(node_dir: str | os.PathLike, data: np.ndarray) -> Path:
    """Write ``data`` as a Zarr v3 array of one chunk, zstd-compressed, at ``node_dir``: the metadata
    and chunk zarr-python writes for ``create_array(data=data, chunks=data.shape)``. For the small
    per-slide arrays (coordinates, thumbnail, mask) that are always read whole."""
    data = np.asarray(data)
    dtype = data.dtype.newbyteorder("<") if data.dtype.itemsize > 1 else data.dtype
    if dtype.kind not in "biuf" or data.ndim == 0:
        raise TypeError(f"{node_dir}: write_array handles bool and numeric arrays of 1+ dimensions, not {data.dtype}")
    node_dir = Path(node_dir)
    node_dir.mkdir(parents=True, exist_ok=True)
    shape = [int(n) for n in data.shape]
    serializer: dict[str, Any] = {"name": "bytes"}
    if dtype.itemsize > 1:
        serializer["configuration"] = {"endian": "little"}
    doc = {
        "shape": shape,
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [max(1, n) for n in shape]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": False if dtype.kind == "b" else 0.0 if dtype.kind == "f" else 0,
        "codecs": [serializer, {"name": "zstd", "configuration": {"level": _ZSTD_LEVEL, "checksum": False}}],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    if data.size:
        chunk = node_dir / "c" / Path(*["0"] * data.ndim)
        chunk.parent.mkdir(parents=True, exist_ok=True)
        raw = np.ascontiguousarray(data, dtype=dtype).tobytes()
        chunk.write_bytes(Zstd(level=_ZSTD_LEVEL).encode(raw))
    (node_dir / METADATA).write_text(json.dumps(doc))
    return node_dir
