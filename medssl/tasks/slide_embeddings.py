"""``medssl embed-slides``: one embedding per slide from a trained slide encoder (MADELEINE), written next
to nothing, resumable like ``medssl embed``.

The slide encoder reads the patch features ``medssl embed`` wrote (``features``) for every slide of the
tile cache in the chosen stains (H&E by default: MADELEINE needs H&E only at inference) and pools them,
all of them, into one vector. Layout of the output folder (``--out DIR``)::

    DIR/cache.zarr/embeddings/<slide_id>/features  float32 [1, E]   the slide embedding
                                        attrs: status, source (the patch features' fingerprint), label, split,
                                               case_id, stain
    DIR/manifest.csv                    one row per slide (status, reason, seconds)

The store's parameters record ``level: "slide"``, the checkpoint and its weights' hash, so
``medssl probe --level slide`` reads it like any embedding folder (one row per slide, nothing averaged),
and a second checkpoint into the same folder is refused unless ``overwrite``. A slide is redone when its
patch features changed since.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.cache import EmbeddingCache, SlideCache
from medssl.cache import store as cache_mod
from medssl.errors import InputError
from medssl.jobs import CacheItemWorker, Job, RunSummary, Written, manifest_path, run_jobs, select_shard
from medssl.methods.madeleine import Madeleine
from medssl.tasks.checkpoints import load_medssl_model

KIND = "embeddings"


@dataclass
class SlideEmbedSummary(RunSummary):
    """What one :func:`embed_slides` run did."""

    dim: int = 0


def embed_slides(
    checkpoint: str | os.PathLike,
    cache: str | os.PathLike,
    features: str | os.PathLike,
    out: str | os.PathLike,
    stains: list[str] | None = None,
    device: str = "auto",
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
) -> SlideEmbedSummary:
    """Embed every complete slide of ``cache`` whose stain is in ``stains`` (default: the model's reference
    stain) with the slide encoder of a MADELEINE ``checkpoint``, from the patch features in ``features``."""
    model = load_medssl_model(checkpoint, Madeleine, "a MADELEINE checkpoint (a medssl slide encoder)")
    stains = stains or [model.hparams.reference_stain]
    unknown = sorted(set(stains) - set(model.stains))
    if unknown:
        raise InputError(f"{checkpoint}: the model knows stains {model.stains}, not {unknown}")
    slides, patches = SlideCache(cache), EmbeddingCache(features)
    chosen = [s for s in slides.ids if str(slides.metadata(s).get("stain") or "") in stains]
    if not chosen:
        raise InputError(f"{cache}: no complete slide has a stain among {stains}")
    patches.require(chosen)
    params = {
        "level": "slide",
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": _sha256(checkpoint),
        "features": str(Path(features).resolve()),
        "cache": str(Path(cache).resolve()),
        "items": "slides",
        "dtype": "float32",
    }
    root = cache_mod.open_for_writing(Path(out), KIND, params, overwrite=overwrite)
    target = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    worker = _SlideEmbedder(root, slides, patches, model.to(target), target)
    jobs = select_shard([Job(slide_id, Path(features)) for slide_id in chosen], shard)
    manifest = manifest_path(Path(out), shard)
    results = run_jobs(jobs, worker, manifest, workers=1, unit="slides", desc="slides", progress=progress)
    return SlideEmbedSummary(out=Path(out), manifest=manifest, results=results, dim=model.hparams.embed_dim)


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _SlideEmbedder(CacheItemWorker):
    """Embeds one slide per call, in the calling process (the model stays loaded)."""

    kind = KIND
    skip_reason = ""

    def __init__(self, root, slides: SlideCache, patches: EmbeddingCache, model: Madeleine, device: torch.device):
        self.root, self.slides, self.patches, self.model, self.device = root, slides, patches, model, device

    def open_root(self):
        return self.root

    def source(self, job: Job) -> dict[str, Any]:
        """The patch features' own fingerprint: new patch features mean a new slide embedding."""
        return {"features": self.patches.metadata(job.item_id).get("source"), "rows": self._rows(job.item_id)}

    def skipped_count(self, previous, source) -> int:
        return 1

    def prepare(self, job: Job, source):
        return nullcontext(self.slides.metadata(job.item_id))

    @torch.inference_mode()
    def write(self, group, job: Job, attrs: dict, progress) -> Written:
        rows = np.asarray(self.patches.features(job.item_id)[:], dtype=np.float32)
        if len(rows) == 0:
            raise InputError(f"{self.patches.path}: slide {job.item_id!r} has no patch features to pool")
        stain = str(attrs.get("stain") or "")
        embedding = self.model.slide_embedding(torch.from_numpy(rows).to(self.device), stain)
        group.create_array("features", data=embedding.float().cpu().numpy()[None])
        progress(1)
        keys = ("label", "split", "case_id", "stain")
        return Written({"source": self.source(job), "num_rows": 1, **{k: attrs.get(k) for k in keys}}, 1, {})

    def _rows(self, slide_id: str) -> int:
        return int(self.patches.features(slide_id).shape[0])
