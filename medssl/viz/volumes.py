"""Pictures and tables of CT/MRI volumes: orthogonal views with label outlines at their physical aspect,
and the before/after of ``medssl cache-volumes`` (grid and intensities).

Volumes are ``[Z, Y, X]`` arrays as :class:`~medssl.cache.VolumeCache` serves them (RAS: x left→right,
y posterior→anterior, z inferior→superior). Views put anterior up in the axial view and superior up in
the coronal and sagittal ones, the patient's left on the left (neurological) and anterior on the right
in the sagittal view; the QC montage of ``medssl cache-volumes`` (:func:`medssl.viz.qc.volume_montage`)
is built on :func:`orthogonal_views`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

import numpy as np
from scipy import ndimage

#: outline colours, one per (outline name, label value) in order; distinct from grey and from each other
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 40, 40),
    (40, 200, 60),
    (50, 120, 245),
    (250, 200, 20),
    (210, 60, 220),
    (20, 215, 215),
    (250, 125, 20),
    (150, 90, 40),
)
VIEWS = ("axial", "coronal", "sagittal")
_CROSS = ndimage.generate_binary_structure(2, 1)
_PERCENTILE_VOXELS = 4_000_000  #: a default window is computed on at most about this many voxels


def _spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive mm values (z, y, x), got {tuple(spacing)}")
    return values[0], values[1], values[2]


def _label_values(label: np.ndarray) -> list[int]:
    """Nonzero values of a bool or integer label volume, ascending (a bincount: fast on uint8/uint16)."""
    if label.dtype == bool:
        return [1] if label.any() else []
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"an outline must be a bool or integer label volume, got dtype {label.dtype}")
    flat = np.asarray(label).ravel()
    if flat.size and flat.min() < 0:
        raise ValueError("label values must be non-negative")
    if flat.size == 0:
        return []
    present = np.flatnonzero(np.bincount(flat)) if flat.max() < 2**16 else np.unique(flat)
    return [int(v) for v in present if v]


def outline_colours(outlines: Mapping[str, np.ndarray]) -> dict[str, dict[int, tuple[int, int, int]]]:
    """``{name: {value: (r, g, b)}}``: the colour :func:`orthogonal_views` draws each outline in (a bool
    mask is value 1), for a legend. Colours follow :data:`PALETTE` through names in order and values
    ascending, cycling after its last colour."""
    out: dict[str, dict[int, tuple[int, int, int]]] = {}
    index = 0
    for name, label in outlines.items():
        out[name] = {}
        for value in _label_values(np.asarray(label)):
            out[name][value] = PALETTE[index % len(PALETTE)]
            index += 1
    return out


def default_window(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles of the finite voxels (of a regular subsample of a large volume):
    a grey-level window that ignores the few extreme voxels (metal, air) that would wash out the rest."""
    step = max(1, int(np.ceil((image.size / _PERCENTILE_VOXELS) ** (1 / 3))))
    values = np.asarray(image[::step, ::step, ::step], dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("the image has no finite voxel to window")
    lo, hi = np.percentile(values, [1, 99])
    return float(lo), float(hi)


def _resample_index(n: int, source_mm: float, pixel_mm: float) -> np.ndarray:
    """Source index of each output pixel (nearest: the source voxel holding the output pixel's centre)
    when ``n`` voxels of ``source_mm`` are redrawn as pixels of ``pixel_mm``."""
    size = max(1, round(n * source_mm / pixel_mm))
    return np.minimum(((np.arange(size) + 0.5) * pixel_mm / source_mm).astype(np.int64), n - 1)


def _planes(volume: np.ndarray, at: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The three planes through ``at``, rows flipped so anterior (axial) and superior (others) are up."""
    z, y, x = at
    return {
        "axial": np.asarray(volume[z])[::-1],
        "coronal": np.asarray(volume[:, y, :])[::-1],
        "sagittal": np.asarray(volume[:, :, x])[::-1],
    }


def _edges(plane: np.ndarray, value: int) -> np.ndarray:
    """Pixels of ``value`` with a 4-neighbour of another value (skimage's ``find_boundaries`` "inner"
    for that value: nothing is drawn along the picture's border)."""
    region = plane == value
    return region & ~cast(np.ndarray, ndimage.binary_erosion(region, _CROSS, border_value=1))  # SciPy: no hints


def orthogonal_views(
    image: np.ndarray,
    spacing: Sequence[float],
    outlines: Mapping[str, np.ndarray] | None = None,
    at: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
    *,
    mm_per_pixel: float | None = None,
) -> dict[str, np.ndarray]:
    """``{"axial", "coronal", "sagittal"}`` RGB uint8 views of a ``[Z, Y, X]`` volume through the voxel
    ``at`` (default the centre), each resampled (nearest) to square pixels of ``mm_per_pixel`` (default
    the finest of ``spacing``, z, y, x mm), so 4 mm slices do not look squashed and the three views share
    one scale.

    ``outlines`` (name → ``[Z, Y, X]`` bool mask or integer label) are drawn as 1-pixel outlines on the
    resampled grid, one colour per name and nonzero value (:func:`outline_colours`; later names over
    earlier ones). Grey levels map ``window`` (default :func:`default_window`) linearly onto 0..255,
    clipped.
    """
    volume = image if isinstance(image, np.ndarray) else np.asarray(image)
    if volume.ndim != 3:
        raise ValueError(f"image must be a [Z, Y, X] volume, got shape {tuple(volume.shape)}")
    sz, sy, sx = _spacing(spacing)
    centre = tuple(int(v) for v in (at if at is not None else [n // 2 for n in volume.shape]))
    if len(centre) != 3 or not all(0 <= v < n for v, n in zip(centre, volume.shape)):
        raise ValueError(f"at={tuple(at or ())} is not a (z, y, x) voxel of a volume of shape {volume.shape}")
    labels = {name: np.asarray(mask) for name, mask in (outlines or {}).items()}
    for name, mask in labels.items():
        if mask.shape != volume.shape:
            raise ValueError(f"outline {name!r} has shape {mask.shape}; the image has {volume.shape}")
    colours = outline_colours(labels)
    lo, hi = default_window(volume) if window is None else (float(window[0]), float(window[1]))
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with low < high, got {(lo, hi)}")
    pixel = min(sz, sy, sx) if mm_per_pixel is None else float(mm_per_pixel)
    if not pixel > 0:
        raise ValueError(f"mm_per_pixel must be positive, got {mm_per_pixel}")
    plane_mm = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}
    label_planes = {name: _planes(mask, (centre[0], centre[1], centre[2])) for name, mask in labels.items()}
    views = {}
    for view, plane in _planes(volume, (centre[0], centre[1], centre[2])).items():
        rows = _resample_index(plane.shape[0], plane_mm[view][0], pixel)
        cols = _resample_index(plane.shape[1], plane_mm[view][1], pixel)
        grey = (plane.astype(np.float32)[np.ix_(rows, cols)] - lo) / (hi - lo)
        grey = np.round(np.clip(np.nan_to_num(grey, nan=0.0), 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for name, planes in label_planes.items():
            resampled = planes[view][np.ix_(rows, cols)]
            for value, colour in colours[name].items():
                rgb[_edges(resampled, value)] = colour
        views[view] = rgb
    return views


def label_centre(label: np.ndarray, value: int | None = None, inside: bool = True) -> tuple[int, int, int]:
    """A ``(z, y, x)`` voxel to look at a label through (``at`` of :func:`orthogonal_views`): the centre
    of mass of the label's largest connected part (``value``: of that value only; default every nonzero
    voxel), moved to the nearest voxel of that part when it falls outside it (a crescent). The centre of
    mass of the whole label (``inside=False``, rounded) can fall between two lungs, where the sagittal
    plane would miss both."""
    volume = np.asarray(label)
    if volume.ndim != 3:
        raise ValueError(f"label must be a [Z, Y, X] volume, got shape {volume.shape}")
    mask = volume > 0 if value is None else volume == value
    if not mask.any():
        raise ValueError("the label has no voxel" + ("" if value is None else f" of value {value}"))
    if inside:
        parts, count = cast(tuple[np.ndarray, int], ndimage.label(mask))  # SciPy ships no type hints
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        mask = parts == 1 + int(np.argmax(sizes[1:]))
    centre = np.asarray(ndimage.center_of_mass(mask), dtype=np.float64)
    z, y, x = (int(v) for v in np.round(centre))
    if inside and not mask[z, y, x]:
        voxels = np.stack(np.nonzero(mask), axis=1)
        z, y, x = (int(v) for v in voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))])
    return z, y, x


# -- before / after caching -------------------------------------------------------------------------
def source_grid(affine: np.ndarray, shape: Sequence[int]) -> dict:
    """The grid of a volume as read from its file, put in RAS order to compare with the cache's:
    ``{"orientation": "LAS", "shape": (x, y, z), "spacing": (x, y, z) mm, "extent": (x, y, z) mm}``.
    ``affine`` maps array indices to RAS world mm (a MONAI MetaTensor's ``.affine``), ``shape`` is the
    array's last three dimensions."""
    import nibabel as nib

    matrix = np.asarray(affine, dtype=np.float64)
    dims = tuple(int(n) for n in tuple(shape)[-3:])
    if matrix.shape != (4, 4) or len(dims) != 3:
        raise ValueError(f"expected a 4×4 affine and a 3D shape, got {matrix.shape} and {tuple(shape)}")
    axes = nib.orientations.io_orientation(matrix)[:, 0].astype(int)  # the RAS axis of each array axis
    spacing, size = np.empty(3), np.empty(3, dtype=np.int64)
    spacing[axes] = np.linalg.norm(matrix[:3, :3], axis=0)
    size[axes] = dims
    return {
        "orientation": "".join(nib.orientations.aff2axcodes(matrix)),
        "shape": tuple(int(n) for n in size),
        "spacing": tuple(round(float(s), 4) for s in spacing),
        "extent": tuple(round(float(n * s), 1) for n, s in zip(size, spacing)),
    }


class ReadVolume(Protocol):
    """A volume as read from its file: its array shape and its index → RAS world mm affine (what
    ``medssl.preprocess.volumes.load_volume`` returns, a MONAI MetaTensor, has both)."""

    @property
    def affine(self) -> Any: ...

    @property
    def shape(self) -> Sequence[int]: ...


def spacing_table(items: Mapping[str, Mapping], sources: Mapping[str, ReadVolume]) -> list[dict]:
    """One row per volume of ``sources``: its grid as read from the file beside its grid in the cache
    (``items``: :meth:`VolumeCache.items`), all in RAS (x, y, z) order. ``sources`` maps volume ids to
    the volumes read from their files (:class:`ReadVolume`). The extent shows the foreground crop."""
    rows = []
    for volume_id, volume in sources.items():
        if volume_id not in items:
            raise KeyError(f"volume {volume_id!r} is not in the cache (it has {sorted(items)})")
        attrs = items[volume_id]
        before = source_grid(np.asarray(volume.affine), volume.shape)
        shape = tuple(int(n) for n in attrs["shape"][::-1])  # stored [Z, Y, X]
        spacing = tuple(round(float(s), 4) for s in attrs["spacing"])  # stored (x, y, z)
        rows.append(
            {
                "volume": volume_id,
                "modality": attrs.get("modality", ""),
                "source orientation": before["orientation"],
                "source shape (x, y, z)": before["shape"],
                "source spacing mm": before["spacing"],
                "source extent mm": before["extent"],
                "cached shape (x, y, z)": shape,
                "cached spacing mm": spacing,
                "cached extent mm": tuple(round(n * s, 1) for n, s in zip(shape, spacing)),
            }
        )
    return rows


def apply_normalization(values: np.ndarray, normalization: Mapping) -> np.ndarray:
    """Source intensities mapped the way a volume's recorded ``normalization`` (its cache attrs) maps
    them: to mark the same landmarks (clip limits, mean) before and after. ``cohort-zscore`` (CT):
    clip, then (v − mean) / std; ``window`` (CT): clip, then scale to 0..1; ``zscore-nonzero`` (MR):
    (v − mean) / std on non-zero voxels, zeros kept."""
    v = np.asarray(values, dtype=np.float64)
    kind = normalization.get("kind")
    if kind == "cohort-zscore":
        lo, hi = normalization["clip"]
        return (np.clip(v, lo, hi) - normalization["mean"]) / normalization["std"]
    if kind == "window":
        lo, hi = normalization["clip"]
        return (np.clip(v, lo, hi) - lo) / (hi - lo)
    if kind == "zscore-nonzero":
        return np.where(v != 0, (v - normalization["mean"]) / normalization["std"], 0.0)
    raise ValueError(f"unknown normalization kind {kind!r}; expected cohort-zscore, window or zscore-nonzero")


def _landmarks(normalization: Mapping) -> dict[str, float]:
    """Source intensities worth marking on both histograms, per normalisation kind."""
    kind = normalization.get("kind")
    if kind == "cohort-zscore":
        lo, hi = normalization["clip"]
        return {"clip low": lo, "cohort mean": normalization["mean"], "clip high": hi}
    if kind == "window":
        lo, hi = normalization["clip"]
        return {"window low": lo, "window high": hi}
    if kind == "zscore-nonzero":
        mean, std = normalization["mean"], normalization["std"]
        return {"mean − 1 SD": mean - std, "mean": mean, "mean + 1 SD": mean + std}
    apply_normalization(np.zeros(1), normalization)  # the clear error for an unknown kind
    return {}


def _histogram(values: np.ndarray, bins: int) -> dict:
    finite = np.asarray(values, dtype=np.float32).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise ValueError("no finite voxel to draw a histogram of")
    counts, edges = np.histogram(finite, bins=bins)
    return {"fraction": counts / finite.size, "edges": edges}


def intensity_histograms(before: np.ndarray, after: np.ndarray, normalization: Mapping, bins: int = 100) -> dict:
    """Histograms of a volume's intensities as read from its file (``before``) and as cached (``after``),
    each as the fraction of voxels per bin (the two volumes differ in voxel count: resampled, cropped),
    with the normalisation's landmarks at their place on both axes::

        {"before": {"fraction", "edges"}, "after": {...},
         "marks": [{"name": "clip low", "before": 14.5, "after": -0.44}, ...]}
    """
    marks = [
        {"name": name, "before": float(value), "after": float(apply_normalization(np.array([value]), normalization)[0])}
        for name, value in _landmarks(normalization).items()
    ]
    return {"before": _histogram(before, bins), "after": _histogram(after, bins), "marks": marks}
