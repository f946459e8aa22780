"""``medssl embed``: a trained encoder run over a cache, features written to Zarr aligned with the cache.

Layout of an embedding folder (``--out DIR``)::

    DIR/cache.zarr/embeddings/<item_id>/features  float [N, D]  row i = tile i of the slide (or axial slice i)
                                        coords    int64 [N, 2]  tiles only: level-0 (x, y), as in the tile cache
                                        volume    float [1, D]  volume encoders only: the volume embedding
    DIR/encoder.pt                      the encoder that made them (see medssl.export.encoders)
    DIR/manifest.csv                    one row per slide/volume (status, reason, count, seconds)

Each slide or volume is staged and committed atomically (the tile cache's machinery), so a killed run
resumes where it stopped, and items whose tiles changed since are redone. Memory is one batch of pixels
plus one of features, whatever the slide size. Another encoder into the same folder is refused unless
``overwrite``. ``SlideBagDataset(cache, features=DIR)`` reads these for MIL.

Dense embeddings (``medssl embed --dense``, ``embed_cache(..., dense=True)``): over a *volume* cache,
with a 3D encoder that has ``dense_maps`` and ``dense_strides`` (a
:class:`~medssl.nn.dense_backbones.SwinEncoder`, e.g. exported from an Alice checkpoint), each whole
volume ``[Z, Y, X]`` goes through the encoder once and its two maps are stored instead of ``features``::

    DIR/cache.zarr/embeddings/<volume_id>/             attrs: status "complete", shape [Z, Y, X] (the cached
                                                              volume's), source, label, split, dense
                                        coarse  float16 [Cc, ceil(Z/16), ceil(Y/16), ceil(X/16)]
                                        fine    float16 [Cf, ceil(Z/4),  ceil(Y/4),  ceil(X/4)]
                                        each array's attrs: stride [sz, sy, sx], normalisation "l2"

Channels first; cell ``(i, j, k)`` of a map at stride ``s`` summarises volume voxels ``[i·s, (i+1)·s)``
per axis (its centre is voxel ``(i + 0.5)·s − 0.5``); ``normalisation: "l2"`` means every vector
(``map[:, i, j, k]``) has unit length (``"none"``: raw vectors, which readers normalise). The
correspondence sampler of Alice (:class:`~medssl.data.correspondence.EmbeddingSampler`) reads these.

An external model's maps (e.g. SAM's) can be written in the same layout with zarr and NumPy alone,
no medssl needed: any strides (per axis) and channel counts, ``float16`` or ``float32``, as long as the
grid is ``ceil(shape / stride)``; the root of the store needs
``attrs["medssl"] = {"schema_version": 1, "kinds": {"embeddings": {"params": {...}}}}`` (the params
are free-form, e.g. the model's name) and each volume group ``status: "complete"`` and ``shape``. See
docs/methods/alice.md for a complete example.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import SequentialSampler
from zarr.core.array_spec import ArrayConfigParams

from medssl.cache import SlideCache, VolumeCache, stored_params
from medssl.cache import store as cache_mod
from medssl.cache.readers import DENSE_LEVELS
from medssl.data.datasets import ThreadedBatchLoader, TileDataset
from medssl.errors import InputError
from medssl.export.encoders import build_from_source, encoder_source, export_encoder, weights_sha256
from medssl.jobs import CacheItemWorker, Job, RunSummary, Written, manifest_path, run_jobs, select_shard
from medssl.nn.backbones import Encoder
from medssl.nn.inputs import to_float

KIND = "embeddings"
ENCODER_FILE = "encoder.pt"
DENSE_CHUNK = 32  #: cells per axis of a dense map's chunks (all channels in each)
# cast: ArrayConfigParams marks its keys NotRequired through typing.NotRequired, which the stubs have
# only from Python 3.11 (Zarr's minimum); checked as 3.10, every key reads as required
_ARRAY_CONFIG = cast(ArrayConfigParams, {"write_empty_chunks": True})


@runtime_checkable
class DenseEncoder(Protocol):
    """What ``medssl embed --dense`` needs of an encoder (a :class:`~medssl.nn.dense_backbones.SwinEncoder`
    has both): the ``coarse`` and ``fine`` maps ``[B, C, *grid]``, L2-normalised, and their strides."""

    dense_strides: dict[str, int]

    def dense_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class EmbedSummary(RunSummary):
    """What one ``embed_cache`` run did; ``encoder`` is the encoder file written beside the features."""

    encoder: Path | None = None


def embed_cache(
    source: "str | os.PathLike | Encoder",
    cache: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 256,
    device: str = "auto",
    dtype: str | None = None,
    threads: int = 2,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    encoder_name: str = "encoder",
    dense: bool = False,
) -> EmbedSummary:
    """Embed every complete slide (tile cache) or volume (volume cache, per axial slice) of ``cache`` with
    the encoder of ``source`` (a method checkpoint, an encoder file or an ``Encoder``) into the folder ``out``.
    ``encoder_name`` picks one of a checkpoint's encoders (its model's ``encoders()``). ``dtype``: the
    stored type, float32 by default (float16 for ``dense``).

    ``dense``: store each volume's ``coarse`` and ``fine`` dense maps instead (module docstring; a
    volume cache and an encoder with ``dense_maps``, else :class:`~medssl.errors.InputError`)."""
    dtype = dtype or ("float16" if dense else "float32")
    if dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be float32 or float16, got {dtype!r}")
    out, cache = Path(out), Path(cache)
    data = encoder_source(source, encoder_name)
    encoder = build_from_source(data, str(source))
    kind = _cache_kind(cache)
    params = {
        "encoder": encoder.config(),
        "encoder_sha256": weights_sha256(data["state_dict"]),
        "cache": str(cache.resolve()),
        "items": kind,
        "dtype": dtype,
    }
    if dense:  # only then, so the params of stores written before dense existed still match
        params["dense"] = {"strides": _dense_strides(encoder, kind, cache, source), "normalisation": "l2"}
    root = cache_mod.open_for_writing(out, KIND, params, overwrite=overwrite)
    encoder_file = out / ENCODER_FILE
    if not encoder_file.exists() or overwrite:
        export_encoder(source, encoder_file, name=encoder_name, cache=params["cache"])
    reader = SlideCache(cache) if kind == "slides" else VolumeCache(cache)
    jobs = select_shard([Job(item_id, cache) for item_id in reader.ids], shard)
    target = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    worker = _Embedder(root, reader, encoder.to(target), target, batch_size, np.dtype(dtype), threads, dense)
    manifest = manifest_path(out, shard)
    unit = "tiles" if kind == "slides" else "slices"
    results = run_jobs(jobs, worker, manifest, workers=1, unit=unit, desc=kind, progress=progress)
    return EmbedSummary(out=out, manifest=manifest, results=results, encoder=encoder_file)


def _cache_kind(cache: Path) -> str:
    for kind in ("slides", "volumes"):
        if stored_params(cache, kind) is not None:
            return kind
    raise InputError(f"{cache}: not a medssl tile or volume cache (run medssl tile or medssl cache-volumes first)")


def _dense_strides(encoder: Encoder, kind: str, cache: Path, source: "str | os.PathLike | Encoder") -> dict[str, int]:
    """The stride of each dense map of ``encoder``; refuses a tile cache or an encoder without dense maps."""
    if kind != "volumes":
        raise InputError(f"{cache}: dense embeddings are made over a volume cache (medssl cache-volumes), not {kind}")
    if not isinstance(encoder, DenseEncoder):
        name = encoder.config().get("name")
        raise InputError(
            f"{source if not isinstance(source, Encoder) else 'the encoder'}: a {name!r} encoder has no dense maps; "
            "--dense needs a 3D encoder with dense_maps, e.g. swin_unetr (an Alice checkpoint)"
        )
    if set(encoder.dense_strides) != set(DENSE_LEVELS):
        raise InputError(f"dense maps must be {DENSE_LEVELS}, the encoder gives {sorted(encoder.dense_strides)}")
    return {name: int(encoder.dense_strides[name]) for name in DENSE_LEVELS}


class _Embedder(CacheItemWorker):
    """Embeds one cache item per call (in the calling process: the encoder stays loaded)."""

    kind = KIND
    skip_reason = ""

    def __init__(
        self,
        root,
        reader,
        encoder: Encoder,
        device: torch.device,
        batch_size: int,
        dtype: np.dtype,
        threads: int,
        dense: bool = False,
    ):
        self.root, self.reader, self.encoder, self.device = root, reader, encoder, device
        self.batch_size, self.dtype, self.threads, self.dense = batch_size, dtype, threads, dense

    def open_root(self):
        return self.root  # opened once by embed_cache: this worker runs in-process only

    def source(self, job: Job) -> dict:
        """The cache item's own source fingerprint and its row count: new tiles mean new features."""
        attrs = self.reader.metadata(job.item_id)
        return {"item": attrs.get("source"), "count": self._count(job.item_id)}

    def skipped_count(self, previous: dict, source: dict) -> int:
        return source["count"]

    def prepare(self, job: Job, source: dict):
        return nullcontext((source, self.reader.metadata(job.item_id)))

    def write(self, group, job: Job, prepared, progress) -> Written:
        source, attrs = prepared
        if self.dense:
            return self._write_dense(group, job.item_id, source, attrs, progress)
        features = group.create_array(
            "features",
            shape=(source["count"], self.encoder.out_dim),
            dtype=self.dtype,
            chunks=(max(1, min(source["count"], self.batch_size)), self.encoder.out_dim),
            config=_ARRAY_CONFIG,
        )
        if self.encoder.name == "slice_stack":  # slices attend to each other: the whole volume at once
            tokens, volume = self._embed_volume(job.item_id)
            features[:] = tokens
            group.create_array("volume", data=volume[None])
            progress(source["count"])
        else:
            start = 0
            for images in self._batches(job.item_id):
                features[start : start + len(images)] = self._embed(images)
                start += len(images)
                progress(len(images))
        if isinstance(self.reader, SlideCache):
            group.create_array("coords", data=self.reader.coords(job.item_id))
        item_attrs = {
            "source": source,
            "num_rows": source["count"],
            "dim": self.encoder.out_dim,
            "label": attrs.get("label"),
            "split": attrs.get("split"),
        }
        return Written(item_attrs, source["count"], {})

    def _write_dense(self, group, item_id: str, source: dict, attrs: dict, progress) -> Written:
        """The ``coarse`` and ``fine`` maps of one whole volume (module docstring), with their strides."""
        encoder = self.encoder
        if not isinstance(self.reader, VolumeCache) or not isinstance(encoder, DenseEncoder):
            raise InputError(f"{self.reader.path}: dense embeddings need a volume cache and a dense encoder")
        shape = self.reader.shape(item_id)
        levels = {}
        for name, data in self._dense_maps(encoder, item_id).items():
            stride = [encoder.dense_strides[name]] * 3
            grid = [-(-n // s) for n, s in zip(shape, stride)]
            if list(data.shape[1:]) != grid:  # the encoder broke its own contract: an internal error
                raise RuntimeError(f"{name} map {list(data.shape)} does not cover {list(shape)} at stride {stride}")
            array = group.create_array(
                name,
                shape=data.shape,
                dtype=self.dtype,
                chunks=(data.shape[0], *(min(g, DENSE_CHUNK) for g in grid)),
                config=_ARRAY_CONFIG,
            )
            array[:] = data
            array.attrs.update({"stride": stride, "normalisation": "l2"})
            levels[name] = {"stride": stride, "dim": int(data.shape[0])}
        progress(source["count"])
        item_attrs = {
            "source": source,
            "num_rows": source["count"],
            "shape": list(shape),
            "dense": levels,
            "label": attrs.get("label"),
            "split": attrs.get("split"),
        }
        return Written(item_attrs, source["count"], {})

    @torch.inference_mode()
    def _dense_maps(self, encoder: DenseEncoder, item_id: str) -> dict[str, np.ndarray]:
        """The encoder's dense maps ``[C, *grid]`` of the whole volume (one forward pass)."""
        image = np.asarray(self.reader.image(item_id), dtype=np.float32)
        volume = torch.from_numpy(image)[None, None].to(self.device)
        maps = encoder.dense_maps(volume)
        return {name: maps[name][0].float().cpu().numpy().astype(self.dtype) for name in DENSE_LEVELS}

    def _count(self, item_id: str) -> int:
        return self.reader.num_tiles(item_id) if isinstance(self.reader, SlideCache) else self.reader.shape(item_id)[0]

    def _batches(self, item_id: str):
        """Pixel batches in storage order: uint8 tiles, or float axial slices ``[b, 1, Y, X]``."""
        if isinstance(self.reader, SlideCache):
            tiles = TileDataset(self.reader, slide_ids=[item_id])
            loader = ThreadedBatchLoader(tiles, SequentialSampler(tiles), self.batch_size, threads=self.threads)
            for batch in loader:
                yield batch["image"]
        else:
            image = self.reader.image(item_id)
            for z in range(0, image.shape[0], self.batch_size):
                yield torch.from_numpy(np.asarray(image[z : z + self.batch_size], dtype=np.float32))[:, None]

    @torch.inference_mode()
    def _embed_volume(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A volume encoder's (joint 2D/3D) slice tokens ``[Z, D]`` and volume embedding ``[D]`` of a whole
        volume, its slices through the 2D encoder ``batch_size`` at a time."""
        if not isinstance(self.reader, VolumeCache):
            raise InputError(f"{self.reader.path}: a volume encoder embeds volume caches, not tile caches")
        image = np.asarray(self.reader.image(item_id), dtype=np.float32)
        volume = torch.from_numpy(image)[None, None].to(self.device)
        tokens, z = self.encoder.network.tokens_and_volume(volume, chunk=self.batch_size)  # pyright: ignore[reportCallIssue]
        return tokens[0].float().cpu().numpy().astype(self.dtype), z[0].float().cpu().numpy().astype(self.dtype)

    @torch.inference_mode()
    def _embed(self, images: torch.Tensor) -> np.ndarray:
        x = images.to(self.device, non_blocking=True)
        x = to_float(x)
        config = self.encoder.config()
        if config["name"].startswith("vit"):  # a ViT takes only its training size
            size = config["img_size"]
            size = (size,) * config["spatial_dims"] if isinstance(size, int) else tuple(size)
            if tuple(x.shape[2:]) != size:
                x = F.interpolate(
                    x, size=size, mode="bilinear" if len(size) == 2 else "trilinear", antialias=len(size) == 2
                )
        return (
            self.encoder(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x)
            .float()
            .cpu()
            .numpy()
            .astype(self.dtype)
        )
