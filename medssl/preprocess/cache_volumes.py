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

DICOM arrives as a PACS exports it (:mod:`medssl.preprocess.dicom`): each folder's files are grouped
by SeriesInstanceUID into one job per series; objects that are not images (RT Dose, RT Structure Set,
SR, SEG, ...) and single-image series are reported with the reason and kept out of the cohort plan;
an image series' modality comes from its Modality tag. A ``label`` may be a DICOM SEG or RT Structure
Set (:mod:`medssl.preprocess.dicom_labels`), drawn onto the image's grid before resampling.
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
from medssl.errors import InputError
from medssl.jobs import (
    SKIPPED,
    CacheItemWorker,
    Job,
    Result,
    RunSummary,
    SourceFingerprint,
    Written,
    collect_jobs,
    manifest_path,
    run_jobs,
    select_shard,
)
from medssl.preprocess.dicom import (
    MODALITY_OF_TAG,
    DicomSeries,
    dicom_files,
    is_dicom_file,
    not_an_image,
    scan_series,
    series_suffixes,
)
from medssl.preprocess.dicom_labels import dicom_label
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
    """NIfTI files, and each folder holding DICOM files (split into its series later: one job each)."""
    nifti = [p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))]
    series = {p.parent for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder) and is_dicom_file(p)}
    return sorted(nifti) + sorted(series)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def volume_id(path: Path) -> str:
    """'case_01.nii.gz' -> 'case_01'; a DICOM series folder keeps its folder name."""
    if path.name.lower().endswith(".nii.gz"):
        return path.name[: -len(".nii.gz")]
    return path.name if path.is_dir() else path.stem


def collect_volume_jobs(inputs: Sequence[str | Path], allow_single_slice: bool = False) -> list[Job]:
    """Jobs from files, folders, globs and CSV manifests, with DICOM folders split into their series."""
    jobs = collect_jobs(
        inputs,
        VOLUME_SUFFIXES,
        "volume_id",
        "image",
        CSV_EXTRA_COLUMNS,
        path_columns=("label",),
        find=find_volumes,
        item_id=volume_id,
    )
    return split_dicom_series(jobs, allow_single_slice)


def split_dicom_series(jobs: Sequence[Job], allow_single_slice: bool = False) -> list[Job]:
    """One job per DICOM series (field ``dicom``: its :class:`DicomSeries`); other jobs pass unchanged.

    The one series of a folder that will be cached keeps the job's id; the others get
    ``<id>-<Modality><SeriesNumber>``. Series that are not image volumes carry their reason: found in a
    folder they are reported as skipped (PACS exports are full of them), named as a file they fail.
    """
    out: list[Job] = []
    for job in jobs:
        files = _dicom_inputs(job)
        series = scan_series(files) if files else []
        if files and not series and job.path.is_dir():
            continue  # only a DICOMDIR (the index of an export); its series are in the folders below
        if not series:
            out.append(job)
            continue
        reasons = [_not_a_volume(one, allow_single_slice) for one in series]
        volumes = [one for one, (reason, _) in zip(series, reasons) if not reason]
        for one, suffix, (reason, fatal) in zip(series, series_suffixes(series), reasons):
            alone = len(series) == 1 or (len(volumes) == 1 and volumes[0] is one)
            fields = {**job.fields, "dicom": one}
            if reason:
                fields["refusal" if fatal or not job.path.is_dir() else "skip"] = reason
            out.append(Job(job.item_id if alone else f"{job.item_id}-{suffix}", job.path, fields))
    ids = [job.item_id for job in out]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(
            f"two inputs share the ids {repeated} after splitting DICOM folders into series; "
            "give unique ids in a CSV manifest"
        )
    return out


def _dicom_inputs(job: Job) -> list[Path]:
    """The DICOM files a job stands for: a folder's own (less the job's label), or the one file named."""
    if job.path.is_dir():
        return dicom_files(job.path, exclude=[p for p in [_label_path(job)] if p is not None])
    if job.path.is_file() and is_dicom_file(job.path):
        return [job.path]
    return []


def _not_a_volume(series: DicomSeries, allow_single_slice: bool) -> tuple[str, bool]:
    """Why a series is not cached ("" when it is), and whether that is a failure (else a skip)."""
    if series.unreadable:
        return f"{series.files[0]}: unreadable DICOM file ({series.unreadable})", True
    name = not_an_image(series.sop_class_uid)
    if name:
        return (
            f"{series.describe()}: {name} is not an image; not cached (an RT Structure Set or SEG is a label: "
            "give it in the CSV 'label' column of its image series)",
            False,
        )
    if series.stack_problem:
        # a localiser in several planes is an expected part of an export; a broken stack is a failure
        return f"{series.describe()}: not one 3D volume: {series.stack_problem}", not series.several_planes
    if series.single_slice and not allow_single_slice:
        return (
            f"{series.describe()}: single-slice series (one 2D {series.sop_class_name} image, e.g. a localiser); "
            "not cached and not planned with; pass --allow-single-slice to cache it as a one-slice volume",
            False,
        )
    return "", False


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

    ``modality`` ("CT" or "MR") applies to inputs without a CSV ``modality`` column; DICOM series
    take theirs from the Modality tag (see :func:`resolve_modality`).
    """
    out = Path(out)
    cohort = collect_volume_jobs(inputs, params.allow_single_slice)
    for job in cohort:
        cache_mod.check_item_id(job.item_id, str(job.path))
        job.fields["modality"], refusal = resolve_modality(job, modality)
        if refusal and not job.fields.get("skip"):
            job.fields.setdefault("refusal", refusal)
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
        extra_fields=("modality", "label_path", "shape", "series_uid"),
    )
    return VolumeSummary(out=out, manifest=manifest, results=results, plan=plan)


def resolve_modality(job: Job, default: str | None) -> tuple[str, str]:
    """(modality, refusal): the DICOM Modality tag when it is CT or MR, else the CSV column or ``default``.

    A given value (CSV column or ``--modality``) that contradicts a CT/MR tag refuses the item (a CT
    normalised as an MR, or the reverse, is silently wrong data); one given for a series whose tag
    medssl does not normalise (OT, PT, ...) is used. With neither (NIfTI records no modality) the item
    is refused with what to give; the other items of the run go on.
    """
    series: DicomSeries | None = job.fields.get("dicom")
    tag = series.modality if series is not None else ""
    source = "the CSV 'modality' column" if job.fields.get("modality") else "--modality"
    given = (job.fields.get("modality") or default or "").strip().upper()
    given = "MR" if given == "MRI" else given
    if given and given not in MODALITIES:
        return "", f"{job.path}: modality {given!r} from {source}; expected CT or MR"
    if tag in MODALITY_OF_TAG:
        if given and given != MODALITY_OF_TAG[tag]:
            return "", (
                f"{series.describe() if series else job.path}: its DICOM Modality tag says {tag} but {source} says "
                f"{given}; fix or drop the given value (the tag is used when nothing is given)"
            )
        return MODALITY_OF_TAG[tag], ""
    if given:
        return given, ""
    if tag:
        return "", f"{job.path}: DICOM Modality {tag!r} is not CT or MR; give --modality CT|MR or a 'modality' column"
    return (
        "",
        f"{job.path}: modality unknown (a NIfTI file does not record it); give --modality CT|MR or a CSV 'modality'",
    )


def make_plan(jobs: Sequence[Job], params: VolumeParams, progress: bool = True) -> Plan:
    """Target spacing and CT statistics from the cohort (only what ``params`` leaves open); items
    already refused or skipped (non-image objects, single slices, unknown modality) are left out."""
    everything, jobs = jobs, [job for job in jobs if not (job.fields.get("skip") or job.fields.get("refusal"))]
    need_ct = params.ct_norm == "cohort" and any(job.fields["modality"] == "CT" for job in jobs)
    if params.spacing is not None and not need_ct:
        return Plan(spacing=_xyz(params.spacing))
    from tqdm.auto import tqdm

    spacings, shapes, ct_samples = [], [], []
    for job in tqdm(jobs, desc="planning", unit="volume", disable=not progress):
        try:
            image = load_volume(job.path, params.frame, files=_series_files(job))
        except VolumeError:
            continue  # reported when the volume itself is processed
        spacing = ras_spacing(image)
        spacings.append(spacing)
        shapes.append(_ras_shape(image))
        if need_ct and job.fields["modality"] == "CT":
            ct_samples.append(sample_foreground(job.item_id, image, params))
    if not spacings:
        refused = [job.fields.get("refusal") or job.fields.get("skip") for job in everything]
        why = "; ".join(r for r in refused if r)[:600]
        raise VolumeError(f"no readable volume to plan the cohort from{': ' + why if why else ''}")
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

    def __call__(self, job: Job, progress: Callable[[int], None]) -> Result:
        """Report a job that is not a volume to cache (skipped) or was refused before loading (failed)
        without opening anything; cache the others."""
        if job.fields.get("skip"):
            return Result(job.item_id, str(job.path), SKIPPED, job.fields["skip"], 0, 0.0, self.manifest_extra(job))
        if job.fields.get("refusal"):
            raise VolumeError(job.fields["refusal"])
        return super().__call__(job, progress)

    def manifest_extra(self, job: Job) -> dict:
        series: DicomSeries | None = job.fields.get("dicom")
        return {
            "modality": job.fields.get("modality", ""),
            "label_path": str(_label_path(job) or ""),
            "series_uid": series.series_uid if series is not None else "",
        }

    def source(self, job: Job) -> dict:
        """The image's fingerprint (a DICOM series': its files' count, total size and newest mtime), and
        the label's when the job has one."""
        label_path = _label_path(job)
        if not job.path.exists():
            raise VolumeError(f"{job.path}: image file not found")
        series: DicomSeries | None = job.fields.get("dicom")
        if series is not None and job.path.is_dir():
            source = {"image": _series_fingerprint(series)}
        else:
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
        image = _meta_tensor(load_volume(job.path, p.frame, files=_series_files(job)), job.path)
        check_finite(job.path, image)
        label, label_names = None, None
        if label_path is not None and label_path.is_file() and is_dicom_file(label_path):
            label, label_names = dicom_label(label_path, image, job.fields.get("dicom"), job.path, p.label_map)
        elif label_path is not None:
            label = load_volume(label_path, None, what="label")
        if label is not None and label_path is not None:
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
            **({"label_names": {str(v): name for v, name in sorted(label_names.items())}} if label_names else {}),
            **({"series_uid": job.fields["dicom"].series_uid} if "dicom" in job.fields else {}),
            **{k: job.fields[k] for k in ("split", "case_id") if k in job.fields},
        }
        return zyx_image, zyx_label, attrs


def _label_path(job: Job) -> Path | None:
    return Path(job.fields["label"]) if job.fields.get("label") else None


def _series_files(job: Job) -> tuple[str, ...] | None:
    """The files of a job's DICOM series when it is one series of a folder (else the path says it all)."""
    series: DicomSeries | None = job.fields.get("dicom")
    return series.files if series is not None and job.path.is_dir() else None


def _series_fingerprint(series: DicomSeries) -> dict:
    """A series changes when a file is added, removed, rewritten or touched."""
    stats = [Path(name).stat() for name in series.files]
    return {
        "path": str(series.folder.resolve()),
        "series_uid": series.series_uid,
        "files": len(stats),
        "size": sum(st.st_size for st in stats),
        "mtime_ns": max(st.st_mtime_ns for st in stats),
    }
