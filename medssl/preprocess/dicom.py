"""DICOM as it arrives from a PACS: folders of files that mix series and object types.

A PACS or TPS export puts, next to the image series, things that are not images of the patient: RT Dose
grids, RT Structure Sets, RT Plans, structured reports (dose reports), key-object notes, presentation
states, segmentations, and single-image "series" (localisers, screen captures). A reader that loads
every file of a folder as one series stacks all of them into one volume; one that loads an RT Dose
grid gets a perfectly shaped array. So, before anything is loaded, each folder's DICOM files are
grouped by SeriesInstanceUID (one job per series) from their headers alone, and each group is
classified by its SOP Class UID (pydicom's names) and its number of frames. The Modality tag
(0008,0060) says whether an image series is CT or MR.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Suffixes DICOM files commonly carry; files without one are DICOM when their preamble says "DICM".
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: The header tags read while scanning (pixels are never read here).
HEADER_TAGS = (
    "SOPClassUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "FrameOfReferenceUID",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)
#: Slice steps of one series may differ by this share of their median before the series is refused.
UNEVEN_SPACING = 0.1
#: pydicom.uid keywords of storage classes that carry no image of the patient to cache.
NOT_IMAGES = frozenset(
    {
        "RTDoseStorage",
        "RTStructureSetStorage",
        "RTPlanStorage",
        "RTIonPlanStorage",
        "RTSegmentAnnotationStorage",
        "SegmentationStorage",
        "SurfaceSegmentationStorage",
        "KeyObjectSelectionDocumentStorage",
        "RawDataStorage",
        "SpatialRegistrationStorage",
        "DeformableSpatialRegistrationStorage",
        "SpatialFiducialsStorage",
        "MediaStorageDirectoryStorage",
    }
)
#: Keyword endings (and beginnings) of whole families of non-image classes: reports, waveforms, presentation
#: states, encapsulated documents, RT records and instructions.
NOT_IMAGE_ENDINGS = ("SRStorage", "WaveformStorage", "PresentationStateStorage", "MeasurementsStorage", "RecordStorage")
NOT_IMAGE_BEGINNINGS = ("Encapsulated", "RTBeams", "RTBrachy", "RTTreatment", "RTRadiation", "RTPhysician", "RTPatient")
#: DICOM Modality values medssl normalises, as medssl names them.
MODALITY_OF_TAG = {"CT": "CT", "MR": "MR"}


@dataclass(frozen=True)
class DicomSeries:
    """One SeriesInstanceUID's files in one folder, and what its headers say about it."""

    folder: Path
    files: tuple[str, ...]  #: file paths, sorted
    series_uid: str
    sop_class_uid: str
    modality: str  #: the Modality tag as written ("" when absent)
    frame_of_reference_uid: str
    series_number: int | None
    frames: int  #: images in the series: files × NumberOfFrames
    unreadable: str = ""  #: why the header could not be read (then the group is that one file)
    stack_problem: str = ""  #: why the files do not form one 3D stack (orientations, repeats, gaps)
    several_planes: bool = False  #: images in several orientations (a localiser), not a broken volume

    @property
    def sop_class_name(self) -> str:
        """'RT Dose Storage', 'CT Image Storage', ... (the UID itself when pydicom does not know it)."""
        from pydicom.uid import UID

        return UID(self.sop_class_uid).name if self.sop_class_uid else "no SOP Class UID"

    @property
    def is_image(self) -> bool:
        return not_an_image(self.sop_class_uid) is None

    @property
    def single_slice(self) -> bool:
        return self.frames <= 1

    def describe(self) -> str:
        """Where the series is, for messages: the file when it is one, else the folder and its UID."""
        if len(self.files) == 1:
            return self.files[0]
        return f"{self.folder} (series {self.series_uid}, {len(self.files)} files)"


def not_an_image(sop_class_uid: str) -> str | None:
    """The storage class's name when it holds no image to cache (RT Dose, RT Structure Set, SR, ...)."""
    from pydicom.uid import UID

    keyword = UID(sop_class_uid).keyword if sop_class_uid else ""
    if keyword in NOT_IMAGES or keyword.endswith(NOT_IMAGE_ENDINGS) or keyword.startswith(NOT_IMAGE_BEGINNINGS):
        return UID(sop_class_uid).name
    return None


def is_dicom_file(path: Path) -> bool:
    """A DICOM file: a DICOM suffix, or no NIfTI suffix and the "DICM" preamble (PACS exports often
    name files by their UID, with no suffix)."""
    from pydicom.misc import is_dicom

    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    if name.endswith(NIFTI_SUFFIXES) or name.endswith(".csv") or name.startswith("."):
        return False
    try:
        return is_dicom(path)
    except OSError:
        return False


def dicom_files(folder: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """The DICOM files directly in ``folder`` (not below), less ``exclude`` (e.g. the job's label)."""
    skip = {p.resolve() for p in exclude}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.resolve() not in skip and is_dicom_file(p))


def scan_series(files: Sequence[Path]) -> list[DicomSeries]:
    """Group ``files`` by (folder, SeriesInstanceUID) from their headers; DICOMDIR index files are left
    out, and a file whose header cannot be read is a group of its own that says why."""
    import pydicom
    from pydicom.uid import UID

    groups: dict[tuple[Path, str], list[tuple[Path, pydicom.Dataset]]] = {}
    broken: list[DicomSeries] = []
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, OSError, ValueError, ...
            reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            broken.append(_unreadable(path, reason))
            continue
        if UID(str(header.get("SOPClassUID", ""))).keyword == "MediaStorageDirectoryStorage":
            continue  # a DICOMDIR: the index of the export, not an object
        uid = str(header.get("SeriesInstanceUID", "")) or f"no-series-uid:{path}"
        groups.setdefault((path.parent, uid), []).append((path, header))
    return [_series(folder, uid, members) for (folder, uid), members in groups.items()] + broken


def _series(folder: Path, uid: str, members: list) -> DicomSeries:
    first = members[0][1]
    number = first.get("SeriesNumber")
    frames = sum(int(header.get("NumberOfFrames") or 1) for _, header in members)
    problem, several_planes = stack_problem([header for _, header in members])
    return DicomSeries(
        stack_problem=problem,
        several_planes=several_planes,
        folder=folder,
        files=tuple(sorted(str(path) for path, _ in members)),
        series_uid=uid,
        sop_class_uid=str(first.get("SOPClassUID", "")),
        modality=str(first.get("Modality", "")).strip().upper(),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        series_number=int(number) if number not in (None, "") else None,
        frames=frames,
    )


def stack_problem(headers: Sequence) -> tuple[str, bool]:
    """Why single-frame images of one series do not form one evenly spaced 3D stack ("" when they do),
    and whether it is because they lie in several planes (a multi-plane localiser). A reader stacks
    them anyway: several echoes, phases or b-values at the same positions, or a missing slice, would
    make a volume with the wrong geometry."""
    import numpy as np

    if len(headers) < 2:
        return "", False
    orientations = {tuple(round(float(v), 3) for v in h.get("ImageOrientationPatient") or ()) for h in headers}
    if len(orientations) > 1:
        return f"its images lie in {len(orientations)} different orientations (a multi-plane localiser?)", True
    (orientation,) = orientations
    positions = [h.get("ImagePositionPatient") for h in headers]
    if len(orientation) != 6 or any(p is None or len(p) != 3 for p in positions):
        return "", False  # no geometry to check; the reader reports what it cannot place
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.sort(np.asarray(positions, dtype=np.float64) @ normal)
    steps = np.diff(along)
    repeats = int((steps < 1e-3).sum())
    if repeats:
        return (
            f"{repeats} of its {len(headers)} images repeat a slice position (several echoes, phases or b-values "
            "in one series?); medssl caches one 3D stack per series",
            False,
        )
    median = float(np.median(steps))
    if float(np.abs(steps - median).max()) > UNEVEN_SPACING * median:
        return (
            f"its slices are unevenly spaced ({steps.min():.3g} to {steps.max():.3g} mm apart: missing slices?)",
            False,
        )
    return "", False


def _unreadable(path: Path, reason: str) -> DicomSeries:
    return DicomSeries(path.parent, (str(path),), f"unreadable:{path}", "", "", "", None, 0, unreadable=reason)


def series_suffixes(series: Sequence[DicomSeries]) -> list[str]:
    """Short id suffixes telling apart the series of one folder: '<Modality><SeriesNumber>' (CT2,
    RTDOSE7), or '<Modality>-<crc32 of the UID>' where numbers are missing or repeated."""
    plain = [f"{s.modality or 'DICOM'}{'' if s.series_number is None else s.series_number}" for s in series]
    out = []
    for name, one in zip(plain, series):
        if one.series_number is None or plain.count(name) > 1:
            name = f"{one.modality or 'DICOM'}-{zlib.crc32(one.series_uid.encode()):08x}"
        out.append("".join(ch for ch in name if ch.isalnum() or ch in "._-"))
    return out
