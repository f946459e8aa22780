"""Volumes with known geometry (NIfTI and DICOM series) for tests, the demo and benchmarks.

Real MRI volumes ship with nibabel (``nibabel/tests/data``: anatomical.nii, example4d.nii.gz); these
helpers add what real data cannot give: a sphere of known physical radius and position, with its
label, at any spacing and orientation, and a CT-sized phantom in Hounsfield units.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def nibabel_data(name: str) -> Path:
    """A real volume shipped with nibabel, e.g. 'anatomical.nii' (MRI, 33×41×25, 2 mm)."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name


def grid_affine(
    spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0), flip_x: bool = False
) -> np.ndarray:
    """A voxel → world (RAS mm) affine; ``flip_x`` gives an LAS array, as many scanners write."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    if flip_x:
        affine[0, 0] = -affine[0, 0]
    return affine


def sphere(
    shape: Sequence[int],
    affine: np.ndarray,
    center_mm: Sequence[float],
    radius_mm: float,
    inside: float = 300.0,
    outside: float = 100.0,
    background: float = 0.0,
    body_radius_mm: float | None = None,
    noise: float = 5.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """An image and label (1 inside the sphere) sampled at voxel centres of ``affine``.

    A body (a larger sphere of ``outside`` intensity, radius ``body_radius_mm``, default 2.5×) sits on
    ``background`` so that foreground cropping has something to crop.
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    distance = np.linalg.norm(world - np.asarray(center_mm, dtype=np.float64), axis=-1)
    body = distance <= (body_radius_mm or 2.5 * radius_mm)
    label = (distance <= radius_mm).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = np.where(body, outside, background) + np.where(label > 0, inside - outside, 0.0)
    image = image + body * rng.normal(0.0, noise, size=image.shape)
    return image.astype(np.float32), label


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def ct_phantom(shape: Sequence[int] = (512, 512, 200), seed: int = 0) -> np.ndarray:
    """A CT-like volume in HU, ``[X, Y, Z]`` float32: air, an elliptic body (soft tissue with noise), a
    spine-like bone cylinder and two lungs."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    lungs = ((np.abs(x) - 0.38) / 0.25) ** 2 + (y / 0.35) ** 2 <= 1
    bone = (x**2 + (y + 0.45) ** 2) <= 0.08**2
    plane = np.full(shape[:2], -1000.0, dtype=np.float32)
    plane[body] = 40.0
    plane[body & lungs] = -850.0
    plane[bone] = 700.0
    volume = np.repeat(plane[..., None], shape[2], axis=2)
    volume += rng.normal(0.0, 10.0, size=shape).astype(np.float32) * body[..., None]
    return volume


def dicom_ras_affine(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """The RAS affine of a series written by :func:`write_dicom_series` (DICOM patient space is LPS)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (-origin[0], -origin[1], origin[2])
    return affine


def write_dicom_series(
    folder: str | Path,
    volume: np.ndarray,
    spacing: Sequence[float],
    origin=(0.0, 0.0, 0.0),
    modality: str = "CT",
    prefix: str = "slice",
    series_number: int = 1,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> Path:
    """Write ``volume`` (``[X, Y, Z]``, values in HU) as an axial CT (or ``modality="MR"``) series, one
    file per slice named ``<prefix>-<k>.dcm``, using pydicom's shipped CT_small.dcm as the template for
    every required tag (one patient and study, whatever the call). ``origin`` is the first voxel's
    ImagePositionPatient (LPS mm); :func:`dicom_ras_affine` gives the matching affine. Several calls
    with different prefixes put several series into one folder, as a PACS export does."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template_path = get_testdata_file("CT_small.dcm")  # a path (read=False), or None when it is absent
    if not isinstance(template_path, str):
        raise FileNotFoundError("pydicom's test file CT_small.dcm is missing; reinstall pydicom")
    template = pydicom.dcmread(template_path)
    series_uid, frame_uid = series_uid or generate_uid(), frame_of_reference_uid or generate_uid()
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}[modality]
    for k in range(volume.shape[2]):
        ds = template.copy()
        pixels = np.round(volume[:, :, k].T).astype(np.int16)  # DICOM rows are y, columns are x
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * spacing[2])]
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.InstanceNumber = k + 1
        ds.Modality, ds.SeriesNumber = modality, series_number
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, frame_uid
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"{prefix}-{k:04d}.dcm", enforce_file_format=True)
    return folder


# -- a cohort of "patients" from nilearn's real brain template --------------------------------------------
BRAIN_CLASSES = ("background", "grey_matter", "white_matter")
MNI152 = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def mni152_files() -> dict[str, Path]:
    """nilearn's shipped 1 mm MNI152 2009 T1 and grey/white-matter maps (package data, no download)."""
    import nilearn  # only to find its folder

    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    files = {kind: folder / MNI152.format(kind) for kind in ("t1", "gm", "wm")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"nilearn's MNI152 files are missing ({missing}); reinstall nilearn")
    return files


def _mni152():
    """The T1 and the grey- and white-matter maps at 1 mm, stacked ``float32 [1, 3, I, J, L]`` (a tensor;
    each 0–1), and their affine."""
    import nibabel as nib
    import torch

    arrays, affine = [], np.eye(4)
    for path in mni152_files().values():
        image = nib.load(path)
        arrays.append(np.asarray(image.dataobj, dtype=np.float32) / 255.0)  # pyright: ignore[reportAttributeAccessIssue]
        affine = np.asarray(image.affine)  # pyright: ignore[reportAttributeAccessIssue]
    return torch.from_numpy(np.stack(arrays))[None], affine


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], control: int, amplitude: float) -> np.ndarray:
    """A smooth random field over ``shape``: Gaussian noise on a ``control``³ grid, trilinearly upsampled."""
    import torch

    coarse = torch.from_numpy(rng.normal(0.0, amplitude, size=(1, 1, control, control, control)))
    fine = torch.nn.functional.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
    return fine[0, 0].numpy()


def _sample(stack, voxels: np.ndarray) -> np.ndarray:
    """Trilinear samples ``[K, *grid]`` of a ``[1, K, I, J, L]`` tensor at voxel coordinates ``[*grid, 3]``
    (zero outside), with torch's ``grid_sample`` (far faster than SciPy's ``map_coordinates``)."""
    import torch

    size = np.array(stack.shape[2:], dtype=np.float64)
    normalised = 2.0 * voxels / (size - 1) - 1.0  # align_corners=True: -1 and 1 are the first and last voxels
    grid = torch.from_numpy(normalised[..., ::-1].astype(np.float32).copy())[None]  # grid_sample wants (l, j, i)
    out = torch.nn.functional.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].numpy()


def _grid_over(stack, affine: np.ndarray, spacing: float) -> tuple[tuple[int, ...], np.ndarray]:
    """The shape and affine (RAS, from the lowest corner) of a ``spacing`` mm grid covering a
    ``[1, K, I, J, L]`` tensor on an axis-aligned ``affine`` (axes may be flipped)."""
    size = np.array(stack.shape[2:])
    extent = size * np.abs(np.diag(affine)[:3])
    corners = np.stack([affine[:3, 3], affine[:3, :3] @ (size - 1) + affine[:3, 3]])
    shape = tuple(int(np.ceil(e / spacing)) for e in extent)
    return shape, grid_affine((spacing,) * 3, origin=[float(v) for v in corners.min(axis=0)])


def warp_source_mm(
    affine: np.ndarray,
    template_shape: Sequence[int],
    shape: Sequence[int],
    out_affine: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float,
    scale: float,
    translation_mm: float,
    deformation_mm: float,
) -> np.ndarray:
    """``[*shape, 3]`` float64: the template position (world mm of ``affine``'s grid, ``template_shape``
    voxels) that each voxel of the ``out_affine`` grid shows under :func:`random_warp`'s mapping with the
    same ``rng`` state and strengths. Two patients' voxels show the same anatomy where these agree: the
    known correspondences a landmark-matching score is measured against."""
    from scipy.spatial.transform import Rotation

    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), axis=-1)
    world = ijk @ out_affine[:3, :3].T.astype(np.float32) + out_affine[:3, 3].astype(np.float32)
    centre = affine[:3, :3] @ (np.array(template_shape) / 2) + affine[:3, 3]
    matrix = Rotation.from_euler("xyz", rng.uniform(-rotation_deg, rotation_deg, 3), degrees=True).as_matrix()
    matrix = matrix * rng.uniform(1 - scale, 1 + scale)
    shift = rng.uniform(-translation_mm, translation_mm, 3)
    source = (world - centre) @ matrix.T.astype(np.float32) + centre + shift
    source = source + np.stack([_smooth_field(rng, shape, 5, deformation_mm) for _ in range(3)], axis=-1)
    return source


def random_warp(
    stack,
    affine: np.ndarray,
    shape: Sequence[int],
    out_affine: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float,
    scale: float,
    translation_mm: float,
    deformation_mm: float,
) -> np.ndarray:
    """``[K, *shape]``: a ``[1, K, I, J, L]`` tensor on ``affine`` sampled on the ``out_affine`` grid through
    a seeded random similarity about the volume's centre (rotation up to ``rotation_deg`` about each axis,
    scale 1 ± ``scale``, shift up to ``translation_mm``) and a smooth random deformation (about
    ``deformation_mm``): one "patient" of a template, every channel under the same mapping
    (:func:`warp_source_mm` gives the mapping itself)."""
    warp = dict(rotation_deg=rotation_deg, scale=scale, translation_mm=translation_mm, deformation_mm=deformation_mm)
    source = warp_source_mm(affine, stack.shape[2:], shape, out_affine, rng, **warp)
    to_voxel = np.linalg.inv(affine)
    return _sample(stack, source @ to_voxel[:3, :3].T + to_voxel[:3, 3])


def _mr_scanner(rng: np.random.Generator, image: np.ndarray, full_scale: float, noise: float) -> np.ndarray:
    """Another MR scanner's look of a 0–1 ``image``: random gamma, a smooth bias field, a gain around
    ``full_scale`` and Gaussian noise of ``noise``; float32."""
    image = np.clip(image, 0.0, None) ** rng.uniform(0.8, 1.25)
    bias = np.exp(_smooth_field(rng, image.shape, 3, 0.1))
    image = full_scale * rng.uniform(0.8, 1.2) * image * bias + rng.normal(0.0, noise, size=image.shape)
    return image.astype(np.float32)


def brain_labels(grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """0 background, 1 grey matter, 2 white matter: the tissue whose probability exceeds 0.5 (at most one
    can; voxels where neither does, partial volume and CSF included, are background)."""
    labels = np.zeros(grey.shape, dtype=np.uint8)
    labels[grey > 0.5] = 1
    labels[white > 0.5] = 2
    return labels


def brain_cohort(
    folder: str | Path,
    n: int = 6,
    spacing: float = 3.0,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    rotation_deg: float = 6.0,
    scale: float = 0.06,
    translation_mm: float = 6.0,
    deformation_mm: float = 3.0,
) -> Path:
    """Write ``n`` brain MRI "patients" with tissue labels and a ``cache-volumes`` manifest; returns its path.

    Each patient is nilearn's real 1 mm MNI152 T1 (:func:`mni152_files`) resampled onto a ``spacing`` mm
    grid through a seeded random affine (rotation up to ``rotation_deg`` about each axis, scale
    1 ± ``scale``, shift up to ``translation_mm``) and a smooth random deformation (about
    ``deformation_mm`` mm), with a random gain, gamma, smooth bias field and noise. Labels
    (:data:`BRAIN_CLASSES`; :func:`brain_labels`) come from the grey/white-matter maps under the same
    mapping, so image and truth correspond exactly. Files: ``<id>.nii.gz``, ``<id>_seg.nii.gz`` and
    ``cohort.csv`` (volume_id, image, label, modality MR, split, case_id); splits are dealt by case
    (:func:`~medssl.data.splits.stratified_case_split`, default 0.6/0.2/0.2)."""
    from medssl.data.splits import stratified_case_split

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stack, mni_affine = _mni152()
    shape, out_affine = _grid_over(stack, mni_affine, spacing)
    warp = dict(rotation_deg=rotation_deg, scale=scale, translation_mm=translation_mm, deformation_mm=deformation_mm)
    ids = [f"brain-{k:02d}" for k in range(n)]
    split_of = stratified_case_split(dict.fromkeys(ids, "brain"), fractions, seed)
    rows = ["volume_id,image,label,modality,split,case_id"]
    for k, case in enumerate(ids):
        rng = _case_rng("brain", k, seed)
        t1, grey, white = random_warp(stack, mni_affine, shape, out_affine, rng, **warp)
        image = _mr_scanner(rng, t1, 255.0, 3.0)
        write_nifti(folder / f"{case}.nii.gz", image, out_affine)
        write_nifti(folder / f"{case}_seg.nii.gz", brain_labels(grey, white), out_affine)
        rows.append(f"{case},{case}.nii.gz,{case}_seg.nii.gz,MR,{split_of[case]},{case}")
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


# -- a mixed cohort: brain MRI, another MRI, CT ----------------------------------------------------------
SOURCES = ("brain", "mri", "ct")  #: volume ids are ``<source>-<k>``
#: :func:`random_warp`'s strengths for every patient of :func:`volume_cohort` (brain_cohort's defaults)
COHORT_WARP = dict(rotation_deg=6.0, scale=0.06, translation_mm=6.0, deformation_mm=3.0)


def _case_rng(source: str, k: int, seed: int) -> np.random.Generator:
    """The generator of patient ``k`` of ``source``: its warp draws come first, then its scanner look."""
    return np.random.default_rng([seed, k] if source == "brain" else [seed, k, len(source)])


def _nibabel_mri():
    """nibabel's real anatomical MRI (2 mm, LAS) scaled to 0–1 at its 99.5th percentile, ``[1, 1, I, J, L]``
    tensor, and its affine."""
    import nibabel as nib
    import torch

    image = nib.load(nibabel_data("anatomical.nii"))
    data = np.asarray(image.dataobj, dtype=np.float32)  # pyright: ignore[reportAttributeAccessIssue]
    data = np.clip(data / np.percentile(data, 99.5), 0.0, 1.0)
    return torch.from_numpy(data)[None, None], np.asarray(image.affine)  # pyright: ignore[reportAttributeAccessIssue]


def _ct_template():
    """:func:`ct_phantom` at 2.5 mm (400 × 320 × 200 mm), shifted to HU + 1000 so that sampling outside
    it (zero) is air: ``[1, 1, I, J, L]`` tensor and its affine."""
    import torch

    volume = ct_phantom((160, 128, 80), seed=0) + 1000.0
    return torch.from_numpy(volume)[None, None], grid_affine((2.5, 2.5, 2.5), origin=(-200.0, -160.0, -100.0))


def volume_cohort(
    folder: str | Path, n: int = 12, spacing: float = 3.0, fractions: dict[str, float] | None = None, seed: int = 0
) -> Path:
    """Write ``n`` "patients" of each of :data:`SOURCES` and one ``cache-volumes`` manifest of them all;
    returns its path (``folder/cohort.csv``; the brain part alone, with its labels, is
    ``folder/brain/cohort.csv``).

    ``brain``: :func:`brain_cohort` (nilearn's 1 mm MNI152 T1, grey/white-matter labels). ``mri``: nibabel's
    real anatomical MRI (a small 2 mm field of view), ``ct``: :func:`ct_phantom` in HU; both under the same
    kind of random similarity and smooth deformation (:func:`random_warp`, default strengths) and a random
    scanner look (MR: gamma, bias field, gain, noise; CT: gain, offset and noise in HU), on a ``spacing``
    grid. Splits are dealt by case within each source (default train 0.6, val 0.2, test 0.2)."""
    from medssl.data.splits import stratified_case_split

    folder = Path(folder)
    brain = brain_cohort(folder / "brain", n=n, spacing=spacing, fractions=fractions, seed=seed)
    rows = []
    for line in brain.read_text().splitlines()[1:]:  # its files, relative to the combined manifest
        case, image, label, *rest = line.split(",")
        rows.append(",".join([case, f"brain/{image}", f"brain/{label}", *rest]))
    warp = COHORT_WARP
    for source, template, modality in (("mri", _nibabel_mri, "MR"), ("ct", _ct_template, "CT")):
        stack, affine = template()
        shape, out_affine = _grid_over(stack, affine, spacing)
        ids = [f"{source}-{k:02d}" for k in range(n)]
        split_of = stratified_case_split(dict.fromkeys(ids, source), fractions, seed)
        for k, case in enumerate(ids):
            rng = _case_rng(source, k, seed)
            (warped,) = random_warp(stack, affine, shape, out_affine, rng, **warp)
            if modality == "MR":
                image = _mr_scanner(rng, warped, 1000.0, 10.0)
            else:
                noise = rng.normal(0.0, rng.uniform(5.0, 20.0), size=warped.shape)
                image = (warped * rng.uniform(0.95, 1.05) - 1000.0 + rng.uniform(-20.0, 20.0) + noise).astype(
                    np.float32
                )
            write_nifti(folder / f"{case}.nii.gz", image, out_affine)
            rows.append(f"{case},{case}.nii.gz,,{modality},{split_of[case]},{case}")
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(["volume_id,image,label,modality,split,case_id", *rows]) + "\n")
    return manifest


@functools.cache
def _cohort_grid(source: str, spacing: float) -> tuple[tuple[int, ...], np.ndarray, tuple[int, ...], np.ndarray]:
    """``source``'s template shape and affine, and its patients' grid at ``spacing`` (loaded once: the MNI152
    maps take a second)."""
    stack, affine = {"brain": _mni152, "mri": _nibabel_mri, "ct": _ct_template}[source]()
    shape, out_affine = _grid_over(stack, affine, spacing)
    return tuple(int(n) for n in stack.shape[2:]), affine, shape, out_affine


def cohort_source_mm(volume_id: str, spacing: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(positions [I, J, K, 3] float64, affine)``: the template position (mm) that each voxel of patient
    ``volume_id`` (``<source>-<k>``) of ``volume_cohort(..., spacing=spacing, seed=seed)`` shows, on
    the grid of its NIfTI file (``affine``). Recomputed from the patient's seed, so nothing is stored
    with the cohort; landmarks of two patients of one source correspond where their positions agree."""
    source, k = volume_id.rsplit("-", 1)
    if source not in SOURCES:
        raise ValueError(f"{volume_id!r} is not a volume_cohort id (<source>-<k>, source one of {SOURCES})")
    template_shape, affine, shape, out_affine = _cohort_grid(source, float(spacing))
    rng = _case_rng(source, int(k), seed)
    return warp_source_mm(affine, template_shape, shape, out_affine, rng, **COHORT_WARP), out_affine.copy()
