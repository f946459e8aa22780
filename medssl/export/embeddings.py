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
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import SequentialSampler
from zarr.core.array_spec import ArrayConfigParams

from medssl.cache import SlideCache, VolumeCache, stored_params
from medssl.cache import store as cache_mod
from medssl.data.datasets import ThreadedBatchLoader, TileDataset
from medssl.errors import InputError
from medssl.export.encoders import build_from_source, encoder_source, export_encoder, weights_sha256
from medssl.jobs import CacheItemWorker, Job, RunSummary, Written, manifest_path, run_jobs, select_shard
from medssl.nn.backbones import Encoder
from medssl.nn.inputs import to_float

KIND = "embeddings"
ENCODER_FILE = "encoder.pt"


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
    dtype: str = "float32",
    threads: int = 2,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    encoder_name: str = "encoder",
) -> EmbedSummary:
    """Embed every complete slide (tile cache) or volume (volume cache, per axial slice) of ``cache`` with
    the encoder of ``source`` (a method checkpoint, an encoder file or an ``Encoder``) into the folder ``out``.
    ``encoder_name`` picks one of a checkpoint's encoders (its model's ``encoders()``)."""
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
    root = cache_mod.open_for_writing(out, KIND, params, overwrite=overwrite)
    encoder_file = out / ENCODER_FILE
    if not encoder_file.exists() or overwrite:
        export_encoder(source, encoder_file, name=encoder_name, cache=params["cache"])
    reader = SlideCache(cache) if kind == "slides" else VolumeCache(cache)
    jobs = select_shard([Job(item_id, cache) for item_id in reader.ids], shard)
    target = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    worker = _Embedder(root, reader, encoder.to(target), target, batch_size, np.dtype(dtype), threads)
    manifest = manifest_path(out, shard)
    unit = "tiles" if kind == "slides" else "slices"
    results = run_jobs(jobs, worker, manifest, workers=1, unit=unit, desc=kind, progress=progress)
    return EmbedSummary(out=out, manifest=manifest, results=results, encoder=encoder_file)


def _cache_kind(cache: Path) -> str:
    for kind in ("slides", "volumes"):
        if stored_params(cache, kind) is not None:
            return kind
    raise InputError(f"{cache}: not a medssl tile or volume cache (run medssl tile or medssl cache-volumes first)")


class _Embedder(CacheItemWorker):
    """Embeds one cache item per call (in the calling process: the encoder stays loaded)."""

    kind = KIND
    skip_reason = ""

    def __init__(
        self, root, reader, encoder: Encoder, device: torch.device, batch_size: int, dtype: np.dtype, threads: int
    ):
        self.root, self.reader, self.encoder, self.device = root, reader, encoder, device
        self.batch_size, self.dtype, self.threads = batch_size, dtype, threads

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
        # cast: ArrayConfigParams marks its keys NotRequired through typing.NotRequired, which the stubs have
        # only from Python 3.11 (Zarr's minimum); checked as 3.10, every key reads as required
        config = cast(ArrayConfigParams, {"write_empty_chunks": True})
        features = group.create_array(
            "features",
            shape=(source["count"], self.encoder.out_dim),
            dtype=self.dtype,
            chunks=(max(1, min(source["count"], self.batch_size)), self.encoder.out_dim),
            config=config,
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
