"""CT/MRI volumes: loading (MONAI readers), validation, nnU-Net-grade preprocessing and cohort planning.

The chain, per volume, built from MONAI transforms where MONAI has them::

    LoadImage (NIfTI via nibabel, DICOM series via pydicom) → one 3D frame → checks (finite, label
    matches) → Orientation RAS → Spacing (image: bilinear, label: nearest) → CropForeground →
    intensity normalisation (CT: clip + z-score with cohort statistics, or a fixed window; MR: z-score
    inside the non-zero foreground)

The *plan* holds what needs the whole cohort (nnU-Net's rules): the target spacing (median, with the
10th percentile on a much coarser axis) and the CT foreground statistics (0.5/99.5 percentiles, mean,
std). It is computed once, stored in the cache, and reused by resumed runs and by every shard.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from medssl.errors import MedsslError
from medssl.preprocess.dicom import is_dicom_file

MODALITIES = ("CT", "MR")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".dcm")
#: nnU-Net's anisotropy threshold: an axis this much coarser than the others is treated specially.
ANISOTROPY = 3.0
#: Foreground voxels sampled per CT volume for cohort statistics.
CT_SAMPLES = 10_000


class VolumeError(MedsslError):
    """A volume cannot be cached: unreadable, wrong dimensionality, bad label, non-finite, empty."""


@dataclass(frozen=True)
class VolumeParams:
    """What decides a volume cache's content; recorded in the cache and compared on every re-run."""

    spacing: tuple[float, float, float] | None = None  #: target mm (x, y, z) in RAS; None = from the cohort
    ct_norm: str = "cohort"  #: "cohort" (nnU-Net: clip to 0.5/99.5 pct, z-score) or "window" (clip, scale to 0..1)
    ct_window: tuple[float, float] = (-1000.0, 1000.0)  #: HU window for ct_norm="window"
    ct_foreground_hu: float = -500.0  #: CT voxels above this are body (foreground)
    crop_foreground: bool = True
    frame: int | None = None  #: which frame/channel of a 4D input to keep; None makes 4D an error
    interpolation: str = "bilinear"  #: MONAI Spacing mode for images (labels are always nearest)
    dtype: str = "float16"  #: stored image dtype
    codec: str = "raw"  #: "raw" (memory-mappable) or "zstd"
    #: DICOM SEG / RT Structure Set labels: (segment or ROI name, label value) pairs; () = their own numbers
    label_map: tuple[tuple[str, int], ...] = ()
    allow_single_slice: bool = False  #: cache single-image DICOM series (and plan with them) instead of skipping

    def __post_init__(self) -> None:
        if self.ct_norm not in ("cohort", "window"):
            raise ValueError(f"ct_norm must be 'cohort' or 'window', got {self.ct_norm!r}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be three positive numbers (x, y, z mm), got {self.spacing}")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"CT window must be (low, high) with low < high, got {self.ct_window}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.codec not in ("raw", "zstd"):
            raise ValueError(f"codec must be 'raw' or 'zstd', got {self.codec!r}")
        if self.interpolation not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"interpolation must be bilinear, nearest or bicubic, got {self.interpolation!r}")
        values = [value for _, value in self.label_map]
        if any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"label map values must be positive integers, got {values}")

    def as_dict(self) -> dict:
        """The recorded parameters; the DICOM options are left out at their defaults, so caches made
        before they existed still resume."""
        out = asdict(self)
        for key in ("label_map", "allow_single_slice"):
            if not out[key]:
                del out[key]
        return out


@dataclass
class Plan:
    """Cohort-level decisions, resolved from :class:`VolumeParams` and the data."""

    spacing: tuple[float, float, float]
    ct: dict = field(default_factory=dict)  #: {"clip": [lo, hi], "mean": m, "std": s} for cohort CT norm

    def as_dict(self) -> dict:
        return {"spacing": list(self.spacing), "ct": self.ct}


# -- loading --------------------------------------------------------------------------------------
def load_volume(
    path: str | os.PathLike, frame: int | None = None, what: str = "image", files: Sequence[str] | None = None
):
    """A ``[1, X, Y, Z]`` float32 MetaTensor (affine in RAS world mm) from a NIfTI file or DICOM folder/file.
    ``files``: for a folder, read only these DICOM files (one series of a folder that holds several)."""
    # MONAI logs and warns on import that its optional GPU DICOM decoder is absent; that is expected.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.transforms.io.array import LoadImage  # the package does not re-export to type checkers

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: {what} file not found")
    reader = "PydicomReader" if path.is_dir() or is_dicom_file(path) else "NibabelReader"
    if files is not None and path.is_dir():
        reader = _series_reader(path, files)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = LoadImage(image_only=True, reader=reader, dtype=np.float32)(str(path))
    except Exception as exc:  # MONAI wraps reader errors in RuntimeError/ValueError/OSError/EOFError
        raise VolumeError(f"{path}: unreadable {what} ({_one_line(exc)})") from None
    return _one_frame(path, volume, frame, what)


def _series_reader(folder: Path, files: Sequence[str]):
    """MONAI's DICOM reader restricted to ``files`` of ``folder``: it reads every file of a folder as one
    series, so the others are excluded with its file-name filter (an exact match of each path)."""
    from monai.data.image_reader import PydicomReader

    names = [re.escape(os.path.join(str(folder), Path(name).name)) for name in files]
    return PydicomReader(fname_regex=f"(?:{'|'.join(names)})\\Z")


def _one_frame(path: Path, volume, frame: int | None, what: str):
    """Keep a 3D volume, picking ``frame`` from a 4D one; refuse anything else with a way out."""
    shape = tuple(volume.shape)
    if volume.ndim == 2:  # a single DICOM slice
        volume = volume[..., None]
    elif volume.ndim == 4:
        if frame is None:
            raise VolumeError(f"{path}: {what} is 4D {shape}; cache one frame with --frame N (0..{shape[3] - 1})")
        if not 0 <= frame < shape[3]:
            raise VolumeError(f"{path}: --frame {frame} is out of range for 4D shape {shape}")
        volume = volume[..., frame]
    elif volume.ndim != 3:
        raise VolumeError(f"{path}: {what} has shape {shape}; expected a 3D volume")
    return volume[None]


def check_finite(path: Path, volume) -> None:
    import torch

    bad = int((~torch.isfinite(volume)).sum())
    if bad:
        raise VolumeError(f"{path}: {bad} NaN/Inf voxels; fix or mask them before caching")


def check_label(image_path: Path, label_path: Path, image, label) -> None:
    """A label must share the image's grid: same shape and same affine (to 1e-3 mm)."""
    if tuple(image.shape) != tuple(label.shape):
        raise VolumeError(
            f"{label_path}: label shape {tuple(label.shape[1:])} does not match image "
            f"{image_path.name} shape {tuple(image.shape[1:])}"
        )
    if not np.allclose(np.asarray(image.affine), np.asarray(label.affine), atol=1e-3):
        raise VolumeError(f"{label_path}: label affine does not match image {image_path.name}'s affine")
    values = np.asarray(label)
    if not np.array_equal(values, np.round(values)) or values.min() < 0:
        raise VolumeError(f"{label_path}: label values must be non-negative integers")


def spacing_of(volume) -> np.ndarray:
    """Voxel size (mm) along each array axis, from the affine's column norms."""
    affine = np.asarray(volume.affine, dtype=np.float64)
    return np.linalg.norm(affine[:3, :3], axis=0)


def ras_spacing(volume) -> np.ndarray:
    """Voxel size along the RAS axes (x, y, z) that Orientation('RAS') will give the array."""
    import nibabel as nib

    affine = np.asarray(volume.affine, dtype=np.float64)
    axes = nib.orientations.io_orientation(affine)[:, 0].astype(int)  # RAS axis of each array axis
    out = np.empty(3)
    out[axes] = spacing_of(volume)
    return out


# -- preprocessing --------------------------------------------------------------------------------
def foreground_fn(modality: str, params: VolumeParams) -> Callable:
    """Body voxels: above a HU threshold for CT, non-zero for MR."""
    if modality == "CT":
        threshold = params.ct_foreground_hu
        return lambda x: x > threshold
    return lambda x: x != 0


def resample(image, label, spacing: Sequence[float], params: VolumeParams, crop_fn: Callable | None):
    """Orientation RAS → Spacing → CropForeground on image (and label, nearest)."""
    # from their modules: monai.transforms does not re-export its names to type checkers
    from monai.transforms.compose import Compose
    from monai.transforms.croppad.dictionary import CropForegroundd
    from monai.transforms.spatial.dictionary import Orientationd, Spacingd

    keys = ["image"] + (["label"] if label is not None else [])
    modes = [params.interpolation] + (["nearest"] if label is not None else [])
    data = {"image": image} | ({"label": label} if label is not None else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's notice about Orientation's labels default
        steps = [
            Orientationd(keys=keys, axcodes="RAS"),
            Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes),
        ]
        if crop_fn is not None:
            steps.append(CropForegroundd(keys=keys, source_key="image", select_fn=crop_fn, allow_smaller=True))
        # cast: MONAI types Compose.__call__ for every input kind; a dict in gives a dict out
        out = cast(dict, Compose(steps)(data))
    return out["image"], out.get("label")


def normalize(image, modality: str, params: VolumeParams, plan: Plan, foreground) -> tuple[object, dict]:
    """Intensity normalisation; returns the image and the statistics used (recorded in the cache)."""
    from monai.transforms.intensity.array import ScaleIntensityRange  # see resample

    if modality == "CT":
        if params.ct_norm == "window":
            lo, hi = params.ct_window
            return ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(image), {"kind": "window", "clip": [lo, hi]}
        lo, hi = plan.ct["clip"]
        mean, std = plan.ct["mean"], plan.ct["std"]
        clipped = image.clamp(lo, hi)
        return _zscore(mean, std)(clipped), {
            "kind": "cohort-zscore",
            "clip": [lo, hi],
            "mean": mean,
            "std": std,
        }
    values = image[foreground]
    if values.numel() == 0:
        raise VolumeError("empty foreground after cropping")
    mean, std = float(values.mean()), float(values.std())
    std = std if std > 1e-8 else 1.0
    normalized = _zscore(mean, std, nonzero=True)(image)
    return normalized, {"kind": "zscore-nonzero", "mean": mean, "std": std}


def _zscore(mean: float, std: float, nonzero: bool = False) -> Callable:
    """MONAI's ``NormalizeIntensity`` with a scalar mean and standard deviation."""
    from monai.transforms.intensity.array import NormalizeIntensity  # see resample

    # MONAI annotates subtrahend and divisor as arrays or sequences, but its _normalize takes scalars too
    return NormalizeIntensity(subtrahend=mean, divisor=std, nonzero=nonzero)  # pyright: ignore[reportArgumentType]


# -- cohort planning ------------------------------------------------------------------------------
def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[float, float, float]:
    """nnU-Net's rule: the median spacing, except that an axis much coarser than the others (and
    with few voxels) takes the 10th percentile of its spacings, so thin structures keep some slices."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.median(spacings, axis=0)
    sizes = np.median(shapes * spacings / target, axis=0)  # voxels per axis after resampling
    worst = int(np.argmax(target))
    others = [axis for axis in range(3) if axis != worst]
    if target[worst] > ANISOTROPY * max(target[others]) and sizes[worst] * ANISOTROPY < min(sizes[others]):
        coarse = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(coarse, max(target[others]) + 1e-5)
    return float(target[0]), float(target[1]), float(target[2])


def ct_statistics(samples: Sequence[np.ndarray]) -> dict:
    """Cohort CT foreground statistics, as nnU-Net's CTNormalization uses them."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples if len(s)])
    if values.size == 0:
        raise MedsslError("no CT foreground voxels in the cohort; check --ct-foreground-hu")
    lo, hi = np.percentile(values, [0.5, 99.5])
    return {"clip": [float(lo), float(hi)], "mean": float(values.mean()), "std": float(values.std() or 1.0)}


def sample_foreground(volume_id: str, image, params: VolumeParams) -> np.ndarray:
    """Up to ``CT_SAMPLES`` foreground intensities, drawn reproducibly from the volume id."""
    values = np.asarray(image).ravel()
    values = values[values > params.ct_foreground_hu]
    if values.size > CT_SAMPLES:
        rng = np.random.default_rng(zlib.crc32(volume_id.encode()))
        values = rng.choice(values, CT_SAMPLES, replace=False)
    return values


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__
