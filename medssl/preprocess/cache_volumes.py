"""``medssl cache-volumes``: CT/MRI volumes into the Zarr cache, ready for 2D-slice and 3D-patch training.

Python API::

    from medssl.preprocess import VolumeParams, cache_volumes
    summary = cache_volumes(["cohort.csv"], "ct-cache/", VolumeParams(spacing=(1.0, 1.0, 2.5)))

Each volume is loaded, checked, oriented to RAS, resampled, cropped to its foreground, normalised
(see :mod:`medssl.preprocess.volumes`) and written axial-slice-major as ``image [Z, Y, X]`` (and
``label``), one shard per array with one axial slice per inner chunk: a slice is one contiguous byte
range, and the uncompressed shard is a plain array file that :class:`~medssl.cache.VolumeCache`
memory-maps, so 3D patches read at memmap speed too. Resume, refusal, shards, workers and the
manifest are the same machinery as ``medssl tile``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from zarr.codecs import ZstdCodec

from medssl.cache import store as cache_mod
from medssl.jobs import (
    CacheItemWorker,
    Job,
    RunSummary,
    SourceFingerprint,
    Written,
    collect_jobs,
    manifest_path,
    run_jobs,
    select_shard,
)
from medssl.preprocess.volumes import (
    MODALITIES,
    VOLUME_SUFFIXES,
    Plan,
    VolumeError,
    VolumeParams,
    check_finite,
    check_label,
    ct_statistics,
    foreground_fn,
    load_volume,
    normalize,
    ras_spacing,
    resample,
    sample_foreground,
    target_spacing,
)
from medssl.viz.qc import save_png_atomically, volume_montage

if TYPE_CHECKING:
    from monai.data.meta_tensor import MetaTensor

KIND = "volumes"
CSV_EXTRA_COLUMNS = ("label", "modality", "split", "case_id")


@dataclass
class VolumeSummary(RunSummary):
    """What one ``cache_volumes`` run did, and the cohort plan it used."""

    plan: Plan


def find_volumes(folder: Path) -> list[Path]:
    """NIfTI files, and each folder of DICOM files as one series."""
    nifti = [p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))]
    series = {p.parent for p in folder.rglob("*.dcm") if p.is_file()}
    return sorted(nifti) + sorted(series)


def volume_id(path: Path) -> str:
    """'case_01.nii.gz' -> 'case_01'; a DICOM series folder keeps its folder name."""
    if path.name.lower().endswith(".nii.gz"):
        return path.name[: -len(".nii.gz")]
    return path.name if path.is_dir() else path.stem


def collect_volume_jobs(inputs: Sequence[str | Path]) -> list[Job]:
    return collect_jobs(
        inputs,
        VOLUME_SUFFIXES,
        "volume_id",
        "image",
        CSV_EXTRA_COLUMNS,
        path_columns=("label",),
        find=find_volumes,
        item_id=volume_id,
    )


def cache_volumes(
    inputs: Sequence[str | Path],
    out: str | Path,
    params: VolumeParams = VolumeParams(),
    modality: str | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
) -> VolumeSummary:
    """Cache every volume in ``inputs`` into the folder ``out``; see the module docstring.

    ``modality`` ("CT" or "MR") applies to inputs without a CSV ``modality`` column.
    """
    out = Path(out)
    cohort = collect_volume_jobs(inputs)
    for job in cohort:
        cache_mod.check_item_id(job.item_id, str(job.path))
        job.fields["modality"] = _modality(job, modality)
    requested = params.as_dict()
    stored = cache_mod.stored_params(out, KIND)
    if stored is not None and stored.get("requested") == cache_mod.jsonable(requested) and not overwrite:
        plan = Plan(spacing=tuple(stored["plan"]["spacing"]), ct=stored["plan"]["ct"])  # resume: keep it
    else:
        plan = make_plan(cohort, params, progress)  # the whole cohort, so every shard agrees
    cache_mod.open_for_writing(out, KIND, {"requested": requested, "plan": plan.as_dict()}, overwrite=overwrite)
    manifest = manifest_path(out, shard)
    results = run_jobs(
        select_shard(cohort, shard),
        VolumeCacher(out, params, plan),
        manifest,
        workers=workers,
        unit="slices",
        desc="volumes",
        progress=progress,
        extra_fields=("modality", "label_path", "shape"),
    )
    return VolumeSummary(out=out, manifest=manifest, results=results, plan=plan)


def _modality(job: Job, default: str | None) -> str:
    value = (job.fields.get("modality") or default or "").upper()
    if value == "MRI":
        value = "MR"
    if value not in MODALITIES:
        raise VolumeError(f"{job.path}: modality {value or 'unknown'!r}; give --modality CT|MR or a 'modality' column")
    return value


def make_plan(jobs: Sequence[Job], params: VolumeParams, progress: bool = True) -> Plan:
    """Target spacing and CT statistics from the cohort (only what ``params`` leaves open)."""
    need_ct = params.ct_norm == "cohort" and any(job.fields["modality"] == "CT" for job in jobs)
    if params.spacing is not None and not need_ct:
        return Plan(spacing=_xyz(params.spacing))
    from tqdm.auto import tqdm

    spacings, shapes, ct_samples = [], [], []
    for job in tqdm(jobs, desc="planning", unit="volume", disable=not progress):
        try:
            image = load_volume(job.path, params.frame)
        except VolumeError:
            continue  # reported when the volume itself is processed
        spacing = ras_spacing(image)
        spacings.append(spacing)
        shapes.append(_ras_shape(image))
        if need_ct and job.fields["modality"] == "CT":
            ct_samples.append(sample_foreground(job.item_id, image, params))
    if not spacings:
        raise VolumeError("no readable volume to plan the cohort from")
    spacing = _xyz(params.spacing) if params.spacing else target_spacing(np.array(spacings), np.array(shapes))
    return Plan(spacing=spacing, ct=ct_statistics(ct_samples) if need_ct else {})


def _xyz(spacing: Sequence[float]) -> tuple[float, float, float]:
    """A spacing (x, y, z) as a tuple, from the list a config or a stored plan may give."""
    x, y, z = spacing
    return x, y, z


def _meta_tensor(volume: object, path: Path) -> MetaTensor:
    """``volume`` as the MetaTensor that MONAI's loading and transforms give (its affine is recorded)."""
    from monai.data.meta_tensor import MetaTensor  # MONAI is loaded by now (load_volume)

    if not isinstance(volume, MetaTensor):
        raise TypeError(f"{path}: expected a MONAI MetaTensor with an affine, got a {type(volume).__name__}")
    return volume


def _ras_shape(volume) -> np.ndarray:
    import nibabel as nib

    axes = nib.orientations.io_orientation(np.asarray(volume.affine))[:, 0].astype(int)
    out = np.empty(3)
    out[axes] = volume.shape[1:]
    return out


def array_kwargs(shape: tuple[int, int, int], codec: str) -> dict:
    """One shard per array, one axial slice per inner chunk (see the module docstring). Empty slices
    are written too, so an uncompressed shard holds every slice in order and can be memory-mapped."""
    return {
        "chunks": (1, shape[1], shape[2]),
        "shards": shape,
        "compressors": ZstdCodec(level=3) if codec == "zstd" else None,
        "config": {"write_empty_chunks": True},
    }


class VolumeCacher(CacheItemWorker):
    """Caches one volume; a picklable callable so worker processes can run it."""

    kind = KIND

    def __init__(self, out: Path, params: VolumeParams, plan: Plan):
        self.out, self.params, self.plan = Path(out), params, plan

    def manifest_extra(self, job: Job) -> dict:
        return {"modality": job.fields["modality"], "label_path": str(_label_path(job) or "")}

    def source(self, job: Job) -> dict:
        """The image's fingerprint, and the label's when the job has one."""
        label_path = _label_path(job)
        if not job.path.exists():
            raise VolumeError(f"{job.path}: image file not found")
        source = {"image": SourceFingerprint.of(job.path).as_dict()}
        if label_path is not None:
            if not label_path.exists():
                raise VolumeError(f"{label_path}: label file not found (for {job.item_id})")
            source["label"] = SourceFingerprint.of(label_path).as_dict()
        return source

    def skipped_count(self, previous: dict, source: dict) -> int:
        return previous["shape"][0]

    def prepare(self, job: Job, source: dict):
        image, label, attrs = self._prepare(job, _label_path(job), job.fields["modality"])
        attrs["source"] = source
        return nullcontext((image, label, attrs))

    def write(self, group, job: Job, prepared, progress: Callable[[int], None]) -> Written:
        image, label, attrs = prepared
        zyx = attrs["shape"]
        group.create_array("image", data=image, **array_kwargs(zyx, self.params.codec))
        if label is not None:
            group.create_array("label", data=label, **array_kwargs(zyx, self.params.codec))
        montage = volume_montage(image, label, self.plan.spacing)
        save_png_atomically(montage, self.out / "qc" / f"{job.item_id}.png")
        return Written(attrs, zyx[0], {"shape": "x".join(map(str, zyx))})

    def after_commit(self, job: Job, written: Written, progress: Callable[[int], None]) -> None:
        progress(written.count)  # slices count once committed

    def _prepare(self, job: Job, label_path: Path | None, modality: str):
        """Load, check, resample, crop and normalise; arrays come back as [Z, Y, X]."""
        p = self.params
        image = _meta_tensor(load_volume(job.path, p.frame), job.path)
        check_finite(job.path, image)
        label = None
        if label_path is not None:
            label = load_volume(label_path, None, what="label")
            check_label(job.path, label_path, image, label)
        is_foreground = foreground_fn(modality, p)
        if not bool(is_foreground(image).any()):
            what = "body voxel above the HU threshold" if modality == "CT" else "non-zero voxel"
            raise VolumeError(f"{job.path}: empty foreground (no {what})")
        original = {
            "shape": list(image.shape[1:]),
            "spacing": [float(v) for v in ras_spacing(image)],
            "affine": np.asarray(image.affine).tolist(),
        }
        image, label = resample(image, label, self.plan.spacing, p, is_foreground if p.crop_foreground else None)
        foreground = is_foreground(image)
        normalized, stats = normalize(image, modality, p, self.plan, foreground)
        image = _meta_tensor(normalized, job.path)
        zyx_image = np.ascontiguousarray(np.asarray(image[0]).transpose(2, 1, 0)).astype(p.dtype)
        zyx_label = None
        if label is not None:
            values = np.asarray(label[0]).round()
            dtype = np.uint8 if values.max() < 256 else np.uint16
            zyx_label = np.ascontiguousarray(values.transpose(2, 1, 0)).astype(dtype)
        attrs = {
            "volume_id": job.item_id,
            "modality": modality,
            "axes": "zyx",
            "shape": list(zyx_image.shape),
            "spacing": [float(v) for v in self.plan.spacing],
            "affine": np.asarray(image.affine).tolist(),
            "original": original,
            "normalization": stats,
            "foreground_fraction": float(foreground.float().mean()),
            "labels": sorted(int(v) for v in np.unique(zyx_label)) if zyx_label is not None else None,
            **{k: job.fields[k] for k in ("split", "case_id") if k in job.fields},
        }
        return zyx_image, zyx_label, attrs


def _label_path(job: Job) -> Path | None:
    return Path(job.fields["label"]) if job.fields.get("label") else None
