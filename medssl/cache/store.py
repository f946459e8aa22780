"""The medssl Zarr store: schema, parameter checks and the write protocol (staging → atomic commit).

Layout of one cache folder (``medssl tile --out DIR``)::

    DIR/cache.zarr/                 Zarr v3 store; root attrs["medssl"] = schema + parameters per kind
        slides/<slide_id>/          complete slides only (a group appears here by atomic rename)
            tiles      uint8 [N, T, T, 3]     tile pixels at the target MPP
            coords     int64 [N, 2]           level-0 (x, y) of each tile's top-left corner
            grid       int32 [N, 2]           (column, row) in the target-resolution tile grid
            tissue     float32 [N]            tissue fraction of each tile
            thumbnail  uint8 [h, w, 3]        whole slide at attrs.thumbnail_mpp
            tissue_mask bool [h, w]           tissue mask on the thumbnail (marker ink excluded)
            pen_mask   bool [h, w]            marker ink on the thumbnail
        staging/<id>/               work in progress; never read, wiped on resume
    DIR/manifest.csv                one row per input of the last run (status, reason, tiles, seconds)
    DIR/qc/<slide_id>.png           kept tiles drawn over the thumbnail

Volume and embedding items follow the same pattern under ``volumes/`` and ``embeddings/``; see
docs/cache.md for every attribute and :mod:`medssl.cache.readers` for reading. The schema version
changes whenever a reader written for the previous version would misread a cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

import medssl
from medssl.cache import nodes
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
        raise CacheError(f"id {item_id!r}{where} is not usable as a cache key; use letters, digits, '.', '_' or '-'")
    return item_id


def jsonable(value: Any) -> Any:
    """Normalise a parameter dict through JSON so comparisons see what the store will hold."""
    return json.loads(json.dumps(value))


def is_store(out: str | os.PathLike) -> bool:
    """True when ``out`` (a cache folder or its store) holds a Zarr store."""
    return (store_path(out) / "zarr.json").exists()


def _medssl_attrs(root: zarr.Group) -> dict[str, Any]:
    """The root's ``medssl`` attribute (a JSON object), empty when absent."""
    meta = root.attrs.get("medssl", {})
    if not isinstance(meta, dict):
        raise CacheError(f"{root.store_path}: the 'medssl' root attribute is not a JSON object; the cache is damaged")
    return dict(meta)


def store_meta(out: str | os.PathLike) -> dict:
    """The store's ``medssl`` root attributes (schema version, medssl version, parameters per kind);
    empty for a store not written by medssl."""
    return _medssl_attrs(zarr.open_group(store_path(out), mode="r", zarr_format=3))


def stored_kinds(out: str | os.PathLike) -> list[str]:
    """The kinds of items (``slides``, ``volumes``, ``embeddings``) a cache folder holds, sorted."""
    return sorted(store_meta(out).get("kinds", {})) if is_store(out) else []


def stored_params(out: str | os.PathLike, kind: str) -> dict | None:
    """The parameters a cache's items of ``kind`` were made with, or None if there are none yet."""
    if not is_store(out):
        return None
    return store_meta(out).get("kinds", {}).get(kind, {}).get("params")


def open_for_writing(out: str | os.PathLike, kind: str, params: Mapping, overwrite: bool = False) -> zarr.Group:
    """Open (or create) the cache store for writing items of ``kind`` ("slides", "volumes", ...).

    A store made with different ``params`` for the same kind is refused, naming each differing key,
    unless ``overwrite`` is set, in which case that kind's items are deleted first.
    """
    path = store_path(out)
    params = jsonable(dict(params))
    if path.exists() and not is_store(path):
        raise CacheError(f"{path}: exists but is not a Zarr store; choose another --out")
    root = zarr.open_group(path, mode="a", zarr_format=3)
    meta = _medssl_attrs(root)
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
    """The attrs of a committed item, or None if it is absent (one small JSON read on a local store)."""
    if isinstance(root.store, LocalStore):
        attrs = nodes.group_attrs(os.path.join(_store_dir(root), kind, item_id))
    else:
        try:
            group = root[f"{kind}/{item_id}"]
        except KeyError:
            return None
        attrs = dict(group.attrs) if isinstance(group, zarr.Group) else None
    return attrs if attrs is not None and attrs.get("status") == "complete" else None


def unchanged_item(root: zarr.Group, kind: str, item_id: str, source: Mapping) -> dict | None:
    """The attrs of a committed item made from exactly ``source`` (its fingerprint), else None."""
    previous = complete_attrs(root, kind, item_id)
    return previous if previous is not None and previous.get("source") == jsonable(dict(source)) else None


def item_attrs(out: str | os.PathLike, kind: str) -> dict[str, dict]:
    """``{item_id: attrs}`` of every item group under ``kind/``, sorted by id: what Zarr's own listing
    gives, from one directory scan and one JSON read per item (see :mod:`medssl.cache.nodes`)."""
    return nodes.list_groups(store_path(out) / kind)


@contextmanager
def staged_item(root: zarr.Group, kind: str, item_id: str) -> Iterator[zarr.Group]:
    """A fresh staging group to write one item into; discarded if the block raises."""
    group = begin_item(root, kind, item_id)
    try:
        yield group
    except BaseException:
        discard_item(root, kind, item_id)
        raise


def _store_dir(root: zarr.Group) -> Path:
    """The folder of a store on local disk (the write protocol renames folders inside it)."""
    if not isinstance(root.store, LocalStore):
        raise CacheError(
            f"{root.store_path}: the cache write protocol needs a store on local disk, "
            f"not a {type(root.store).__name__}"
        )
    return Path(root.store.root)


def begin_item(root: zarr.Group, kind: str, item_id: str) -> zarr.Group:
    """A fresh staging group for one item; any leftover from an interrupted run is discarded."""
    base = _store_dir(root)
    staging = base / STAGING / kind / item_id
    if staging.exists():
        shutil.rmtree(staging)
    for parent in (base / STAGING, base / STAGING / kind):  # made by open_for_writing; kept if present
        if nodes.read_node(parent) is None:
            nodes.write_group(parent)
    nodes.write_group(staging)
    return zarr.open_group(staging, mode="r+", zarr_format=3)


def write_small_arrays(group: zarr.Group, arrays: Mapping[str, np.ndarray]) -> None:
    """Write small arrays into a staging group, each as one zstd chunk, with plain file writes
    (:func:`medssl.cache.nodes.write_array`): the same Zarr arrays as ``group.create_array(name,
    data=..., chunks=shape)``, without a round trip through Zarr's event loop for each."""
    folder = _store_dir(group) / group.path
    for name, data in arrays.items():
        nodes.write_array(folder / name, data)


def discard_item(root: zarr.Group, kind: str, item_id: str) -> None:
    """Drop an item's staging group (after a failure); committed data is untouched."""
    staging = _store_dir(root) / STAGING / kind / item_id
    shutil.rmtree(staging, ignore_errors=True)


def commit_item(root: zarr.Group, kind: str, item_id: str, attrs: Mapping) -> None:
    """Mark a staged item complete and move it into place with atomic renames.

    The old committed version, if any, is moved aside first and deleted only after the new one is in
    place, so a kill at any moment leaves either the old complete item or the new one.
    """
    base = _store_dir(root)
    nodes.update_group_attrs(base / STAGING / kind / item_id, jsonable({**attrs, "status": "complete"}))
    final = base / kind / item_id
    trash = None
    if final.exists():
        trash = base / _TRASH / f"{kind}-{item_id}-{uuid.uuid4().hex}"
        trash.parent.mkdir(exist_ok=True)
        os.replace(final, trash)
    os.replace(base / STAGING / kind / item_id, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
