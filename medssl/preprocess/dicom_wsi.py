"""DICOM whole-slide images: a slide is a *series* of files, one per pyramid level (plus label/overview).

Scanners export a DICOM WSI as one folder with one ``.dcm`` instance per level, all sharing a Series
Instance UID. OpenSlide (4.0+) opens such a slide from any one of its files and finds the others in the
same folder by that UID, ignoring other series and non-WSI files. So the unit of work is the series:
files are grouped by (folder, Series Instance UID), each series becomes one job that opens its level-0
instance, and its fingerprint covers every file, so changing any instance re-tiles the slide. DICOM files
of other SOP classes (CT, secondary captures, structured reports) are not slides and are skipped.

Headers are read with pydicom without pixel data; a folder is scanned once per change of its contents.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medssl.preprocess.dicom import is_dicom_file

VL_WHOLE_SLIDE_MICROSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.6"
_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
    "ContainerIdentifier",
]
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class DicomInstance:
    """What the header of one DICOM file says about its place in a slide."""

    path: Path
    sop_class: str
    series_uid: str
    image_type: tuple[str, ...]
    width: int  #: TotalPixelMatrixColumns (0 when absent)
    height: int
    container: str  #: ContainerIdentifier (the slide's barcode/label), "" when absent

    @property
    def is_wsi(self) -> bool:
        return self.sop_class == VL_WHOLE_SLIDE_MICROSCOPY

    @property
    def is_level(self) -> bool:
        """A pyramid level (ImageType VOLUME), not a label, overview or thumbnail."""
        return len(self.image_type) > 2 and self.image_type[2] == "VOLUME"


@dataclass(frozen=True)
class WsiSeries:
    """The files of one DICOM whole slide: one folder, one Series Instance UID."""

    folder: Path
    uid: str
    instances: tuple[DicomInstance, ...]

    @property
    def files(self) -> list[Path]:
        return sorted(i.path for i in self.instances)

    @property
    def opener(self) -> Path:
        """The file to hand OpenSlide: the largest pyramid level (any file works; errors about level 0
        are the useful ones)."""
        levels = [i for i in self.instances if i.is_level] or list(self.instances)
        return max(levels, key=lambda i: (i.width * i.height, str(i.path))).path

    @property
    def container(self) -> str:
        return next((i.container for i in self.instances if i.container), "")


def read_instance(path: Path) -> DicomInstance | None:
    """The header of a DICOM Part-10 file (no pixel data read); ``None`` for anything else."""
    if not is_dicom_file(path):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (OSError, InvalidDicomError, ValueError, EOFError):
        return None
    sop = str(getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    image_type = ds.get("ImageType", [])
    image_type = (image_type,) if isinstance(image_type, str) else tuple(str(v) for v in image_type)
    return DicomInstance(
        path=path,
        sop_class=sop,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        image_type=image_type,
        width=int(ds.get("TotalPixelMatrixColumns", 0) or 0),
        height=int(ds.get("TotalPixelMatrixRows", 0) or 0),
        container=str(ds.get("ContainerIdentifier", "") or ""),
    )


def folder_series(folder: Path) -> dict[str, WsiSeries]:
    """The whole-slide series in ``folder`` (not its subfolders, as OpenSlide looks), by Series UID."""
    folder = folder.resolve()
    entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file())
    return _scan(folder, tuple(entries))


@lru_cache(maxsize=64)
def _scan(folder: Path, entries: tuple) -> dict[str, WsiSeries]:
    """``entries`` (name, size, mtime) is the cache key: a changed folder is scanned again."""
    grouped: dict[str, list[DicomInstance]] = {}
    for name, _, _ in entries:
        if name.startswith("."):
            continue
        instance = read_instance(folder / name)
        if instance is not None and instance.is_wsi and instance.series_uid:
            grouped.setdefault(instance.series_uid, []).append(instance)
    return {uid: WsiSeries(folder, uid, tuple(found)) for uid, found in sorted(grouped.items())}


def series_of(path: Path) -> WsiSeries | None:
    """The whole-slide series ``path`` belongs to, or ``None`` (not a file, not DICOM, not a WSI)."""
    if not path.is_file():
        return None
    instance = read_instance(path)
    if instance is None or not instance.is_wsi:
        return None
    return folder_series(path.parent).get(instance.series_uid)


def series_slide_id(series: WsiSeries) -> str:
    """The folder's name when it holds one slide; else the folder's name and the slide's container
    identifier (its barcode) when that tells the folder's slides apart, or the UID's last 8 digits."""
    siblings = folder_series(series.folder)
    name = series.folder.name
    if len(siblings) <= 1:
        return name
    containers = [s.container for s in siblings.values()]
    if series.container and containers.count(series.container) == 1:
        return f"{name}-{_SAFE_ID.sub('_', series.container)}"
    return f"{name}-{series.uid.replace('.', '')[-8:]}"


def canonical_slide_path(path: Path) -> Path:
    """The file that stands for ``path``'s slide: a DICOM WSI instance → its series' opener; else ``path``.
    Several files of one series thus become one job."""
    if path.suffix.lower() != ".dcm":
        return path
    series = series_of(path)
    return series.opener if series is not None else path


def not_a_slide(path: Path) -> str | None:
    """Why a ``.dcm`` file is no whole slide (to skip it), or ``None`` if it may be one."""
    if path.suffix.lower() != ".dcm" or not path.is_file():
        return None
    instance = read_instance(path)
    if instance is None or instance.is_wsi:
        return None  # not DICOM at all (OpenSlide reports why), or a whole slide
    return describe_non_wsi(path)


def describe_non_wsi(path: Path) -> str:
    """A one-line reason why a ``.dcm`` file is not a whole-slide image."""
    instance = read_instance(path)
    if instance is None:
        return "not a DICOM Part-10 file OpenSlide can read"
    if not instance.is_wsi:
        name = UID(instance.sop_class).name if instance.sop_class else "none"
        return f"a DICOM file but not a whole-slide image (SOP class {name}); skipped"
    return "a DICOM whole-slide instance OpenSlide cannot read"


def series_fingerprint(path: Path) -> dict | None:
    """``{path, size, mtime_ns, files}`` covering every file of ``path``'s series (``size`` their total,
    ``mtime_ns`` the newest), or ``None`` when ``path`` is not part of a DICOM whole slide."""
    series = series_of(path) if path.suffix.lower() == ".dcm" else None
    if series is None:
        return None
    files = []
    for file in series.files:
        st = os.stat(file)
        files.append({"name": file.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {
        "path": str(path.resolve()),
        "size": sum(f["size"] for f in files),
        "mtime_ns": max(f["mtime_ns"] for f in files),
        "files": files,
    }
