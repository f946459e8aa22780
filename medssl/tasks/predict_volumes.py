"""Segment a volume cohort and write each prediction over its original scan (``medssl segment``).

For each selected volume of a cache written by ``medssl cache-volumes``: predict a label map on the
cached grid, map it back onto the original file's voxel grid (undoing crop, resampling and orientation
with what the cache recorded, :mod:`medssl.preprocess.volume_geometry`) and write
``<out>/<volume_id>.nii.gz`` with the original affine, so it opens over the original scan in any
viewer. Where the cache holds the volume's label, per-class Dice on the cached grid goes into the
case's record. Outputs::

    out/<volume_id>.nii.gz     the prediction, original shape and affine (written atomically)
    out/cases/<volume_id>.json the case's record: where it came from, Dice per class (written last, atomically)
    out/metrics.csv            one row per case and class (rebuilt from the case records at the end of a run)
    out/manifest.csv           what this run did to each case: done, skipped, or failed with the reason

A case counts as complete only once its record exists, and the record names what the prediction was
made from (a digest of the cache item's attrs and the model's identity): a re-run skips complete cases
made from the same item and model and redoes the rest, so a killed run resumes where it stopped. One
case failing (an unreadable item, a cache without the original geometry, a predictor error) is listed
in the manifest with its reason while the others finish.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medssl.cache import VolumeCache
from medssl.errors import InputError, MedsslError
from medssl.eval.results import write_csv_atomic
from medssl.eval.segmentation import case_metrics
from medssl.files import write_text_atomic
from medssl.jobs import DONE, SKIPPED, Job, Result, RunSummary, SourceFingerprint, run_jobs
from medssl.preprocess.volume_geometry import (
    cached_affine,
    label_dtype,
    original_geometry,
    to_original_grid,
    write_nifti_atomically,
)
from medssl.tasks.checkpoints import load_task_model

PREDICTION_SUFFIX = ".nii.gz"
METRIC_COLUMNS = ("volume_id", "split", "class", "dice", "iou", "hd95", "predicted_voxels", "truth_voxels")


class VolumePredictor(Protocol):
    """What :func:`predict_volumes` needs: a whole cached volume ``[1, Z, Y, X]`` (float) in, a label
    map ``[Z, Y, X]`` (integers) out. The segmentation task's model provides it."""

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor: ...


class PredictionError(MedsslError):
    """A case could not be predicted: the predictor failed or returned something that is not a label map."""


@dataclass
class PredictionSummary(RunSummary):
    """What one :func:`predict_volumes` run did; ``records`` are the complete cases' records (this run's
    and earlier runs'), ``metrics`` the CSV built from them (None when no case had a label)."""

    records: list[dict] = field(default_factory=list)
    metrics: Path | None = None

    def mean_dice(self) -> dict[int, float]:
        """Mean Dice per class over the complete cases that have one."""
        values: dict[int, list[float]] = {}
        for record in self.records:
            for label, dice in (record.get("dice") or {}).items():
                values.setdefault(int(label), []).append(float(dice))
        return {label: float(np.mean(v)) for label, v in sorted(values.items())}


def predict_volumes(
    predictor: VolumePredictor,
    cache: str | os.PathLike | VolumeCache,
    out: str | os.PathLike,
    volume_ids: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    model_id: Any = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> PredictionSummary:
    """Predict every selected volume of ``cache`` and write the outputs listed in the module docstring.

    ``volume_ids`` / ``splits`` select volumes (default: all). ``model_id`` (JSON-able) identifies the
    model in the case records, so that a re-run with another model redoes the cases (``medssl segment``
    passes the checkpoint's fingerprint; default: the predictor's class name). ``overwrite`` redoes
    complete cases too. Images go to ``device`` before the predictor sees them."""
    volumes = cache if isinstance(cache, VolumeCache) else VolumeCache(cache)
    out = Path(out)
    selected = select_volumes(volumes, volume_ids, splits)
    identity = model_id if model_id is not None else type(predictor).__qualname__
    worker = CaseWorker(predictor, volumes, out, identity, overwrite, torch.device(device))
    jobs = [Job(volume_id, volumes.path / volumes.kind / volume_id) for volume_id in selected]
    manifest = out / "manifest.csv"
    results = run_jobs(
        jobs, worker, manifest, unit="slices", desc="volumes", progress=progress, extra_fields=("prediction",)
    )
    records = [r for r in (read_case_record(out, volume_id) for volume_id in selected) if r is not None]
    metrics = write_metrics(out / "metrics.csv", records) if any(r.get("dice") is not None for r in records) else None
    return PredictionSummary(out=out, manifest=manifest, results=results, records=records, metrics=metrics)


def select_volumes(cache: VolumeCache, volume_ids: Sequence[str] | None, splits: Sequence[str] | None) -> list[str]:
    """The volumes to predict, in cache order; unknown ids and a selection that matches nothing are refused."""
    ids = cache.ids
    if volume_ids:
        unknown = [v for v in volume_ids if v not in ids]
        if unknown:
            raise InputError(f"{cache.path}: no complete volume {', '.join(map(repr, unknown))}; it holds {ids[:10]}")
        ids = [v for v in ids if v in set(volume_ids)]
    if splits:
        ids = [v for v in ids if cache.metadata(v).get("split") in set(splits)]
    if not ids:
        recorded = sorted({str(cache.metadata(v).get("split")) for v in cache.ids})
        raise InputError(f"{cache.path}: no volume selected (splits {list(splits or [])}; the cache has {recorded})")
    return ids


class CaseWorker:
    """Predicts and writes one case; a :func:`~medssl.jobs.run_jobs` worker (in this process: it holds the model)."""

    def __init__(
        self,
        predictor: VolumePredictor,
        cache: VolumeCache,
        out: Path,
        model_id: Any,
        overwrite: bool,
        device: torch.device,
    ):
        self.predictor, self.cache, self.out = predictor, cache, out
        self.model_id, self.overwrite, self.device = model_id, overwrite, device

    def __call__(self, job: Job, progress: Callable[[int], None]) -> Result:
        volume_id = job.item_id
        where = f"{self.cache.path}: volume {volume_id!r}"
        attrs = self.cache.metadata(volume_id)
        made_from = {"cache_item": attrs_digest(attrs), "model": self.model_id}
        prediction_path = self.out / f"{volume_id}{PREDICTION_SUFFIX}"
        previous = read_case_record(self.out, volume_id)
        if not self.overwrite and previous is not None and previous.get("made_from") == made_from:
            if prediction_path.is_file():
                extra = {"prediction": str(prediction_path)}
                return Result(volume_id, str(job.path), SKIPPED, "already complete", previous["slices"], 0.0, extra)
        original_shape, original_affine = original_geometry(attrs, where)  # before the work: fail early
        affine = cached_affine(attrs, where)
        image = torch.from_numpy(np.asarray(self.cache.image(volume_id), dtype=np.float32))[None]
        prediction = self.predict(image, where)
        truth = self.cache.label(volume_id)
        scores: dict[str, Any] = {}
        if truth is not None:
            classes = getattr(self.predictor, "num_classes", None)
            spacing = attrs["spacing"][::-1]  # x, y, z mm → the array's z, y, x
            scores = scores_per_class(prediction, np.asarray(truth), classes, spacing)
        labels = prediction.astype(label_dtype(prediction), copy=False)
        on_original = to_original_grid(labels, affine, original_shape, original_affine)
        write_nifti_atomically(prediction_path, on_original, original_affine)
        record = {
            "volume_id": volume_id,
            "split": attrs.get("split"),
            "case_id": attrs.get("case_id"),
            "prediction": prediction_path.name,
            "original_shape": list(original_shape),
            "cached_shape": list(prediction.shape),
            "slices": int(prediction.shape[0]),
            "dice": scores.get("dice"),
            "iou": scores.get("iou"),
            "hd95": scores.get("hd95"),
            "voxels": scores.get("voxels"),
            "made_from": made_from,
        }
        write_text_atomic(case_record_path(self.out, volume_id), json.dumps(record, indent=1))  # last: complete
        progress(record["slices"])
        return Result(volume_id, str(job.path), DONE, "", record["slices"], 0.0, {"prediction": str(prediction_path)})

    @torch.no_grad()
    def predict(self, image: torch.Tensor, where: str) -> np.ndarray:
        """The predictor's label map as integers ``[Z, Y, X]``; its failures and wrong outputs name the case."""
        try:
            output = self.predictor.predict_volume(image.to(self.device))
        except MedsslError:
            raise
        except Exception as exc:
            raise PredictionError(f"{where}: prediction failed ({type(exc).__name__}: {exc})") from exc
        labels = output.detach().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
        if labels.shape != tuple(image.shape[1:]):
            raise PredictionError(
                f"{where}: the predictor returned shape {labels.shape} for a volume of shape {tuple(image.shape[1:])}"
            )
        if labels.dtype == bool:
            labels = labels.astype(np.uint8)
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise PredictionError(f"{where}: the predictor returned {labels.dtype} values, not a label map (0, 1, ...)")
        return labels


def scores_per_class(
    prediction: np.ndarray, truth: np.ndarray, num_classes: int | None = None, spacing=None
) -> dict[str, dict[str, Any]]:
    """Dice, IoU and HD95 (mm, from ``spacing`` per array axis) of each foreground class, scored as
    validation scores them (:func:`~medssl.eval.segmentation.case_metrics`: a class absent from the truth
    has none, so it is left out), and ``[predicted, truth]`` voxel counts of every class in either
    (a class predicted where the truth has none shows as ``[n, 0]``). Keys are class values as strings
    (JSON object keys). ``num_classes`` defaults to the largest label + 1."""
    if prediction.shape != truth.shape:
        raise PredictionError(f"prediction shape {prediction.shape} differs from the label's {truth.shape}")
    prediction, truth = prediction.astype(np.int64, copy=False), truth.astype(np.int64, copy=False)
    count = num_classes or int(max(prediction.max(initial=0), truth.max(initial=0))) + 1
    metrics = case_metrics(torch.from_numpy(prediction), torch.from_numpy(truth), count, spacing)
    out: dict[str, dict[str, Any]] = {
        name: {str(c): v for c, v in enumerate(values, start=1) if math.isfinite(v)} for name, values in metrics.items()
    }
    predicted, actual = np.bincount(prediction.ravel(), minlength=count), np.bincount(truth.ravel(), minlength=count)
    out["voxels"] = {str(c): [int(predicted[c]), int(actual[c])] for c in range(1, count) if predicted[c] or actual[c]}
    return out


def attrs_digest(attrs: Mapping[str, Any]) -> str:
    """A digest of a cache item's attrs (its source fingerprint, geometry, normalisation): a re-cached
    item gets a new one, so its old prediction is not taken for complete."""
    return hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()


def case_record_path(out: Path, volume_id: str) -> Path:
    return out / "cases" / f"{volume_id}.json"


def read_case_record(out: Path, volume_id: str) -> dict | None:
    """The case's record, or None when the case is not complete (no record, or an unreadable one)."""
    path = case_record_path(out, volume_id)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_metrics(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """``metrics.csv``: one row per case and class (:data:`METRIC_COLUMNS`), written atomically."""
    rows = []
    for record in records:
        for label, (predicted, actual) in (record.get("voxels") or {}).items():
            scores = [record.get(name, {}).get(label) for name in ("dice", "iou", "hd95")]
            cells = ["" if value is None else f"{value:.6f}" for value in scores]
            rows.append([record["volume_id"], record.get("split") or "", label, *cells, predicted, actual])
    return write_csv_atomic(path, METRIC_COLUMNS, rows)


# -- from a checkpoint ----------------------------------------------------------------------------
def load_segmenter(checkpoint: str | os.PathLike, device: str = "cpu") -> VolumePredictor:
    """The segmentation model of a fine-tuning checkpoint, on ``device``, in eval mode."""
    model = load_task_model(checkpoint)
    if not callable(getattr(model, "predict_volume", None)):
        raise InputError(f"{checkpoint}: {type(model).__name__} is not a volume segmentation model (no predict_volume)")
    model = model.to(device)
    return model  # pyright: ignore[reportReturnType]  (predict_volume checked above)


def segment_from_checkpoint(
    checkpoint: str | os.PathLike,
    cache: str | os.PathLike,
    out: str | os.PathLike,
    volume_ids: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> PredictionSummary:
    """:func:`predict_volumes` with the model of ``checkpoint``, identified by the file's fingerprint."""
    predictor = load_segmenter(checkpoint, device)
    model_id = SourceFingerprint.of(checkpoint).as_dict()
    return predict_volumes(predictor, cache, out, volume_ids, splits, overwrite, model_id, device, progress)
