"""DICOM whole-slide series written with pydicom, as scanners export them: one folder, one instance per
pyramid level (VL Whole Slide Microscopy Image Storage, TILED_FULL frames), all sharing a Series Instance
UID. OpenSlide reads them (its ``dicom`` vendor), so tests can check a DICOM slide end to end.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from medssl.preprocess.dicom_wsi import VL_WHOLE_SLIDE_MICROSCOPY
from medssl.synthetic.slides import GLASS_RGB, SlideRenderer


def write_dicom_wsi(
    folder: str | Path,
    layout: SlideRenderer,
    mpp: float = 0.5,
    downsamples: Sequence[int] = (1, 4),
    tile: int = 256,
    jpeg: bool = True,
    quality: int = 90,
    container: str = "",
    series_uid: str | None = None,
    prefix: str = "level",
) -> list[Path]:
    """Write ``layout`` as one DICOM instance per level into ``folder`` (``<prefix>-<k>.dcm``); returns the
    files. PixelSpacing (mm) gives the MPP; ``jpeg=False`` stores uncompressed RGB frames."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_of_reference = generate_uid(), generate_uid()
    paths = []
    for k, ds in enumerate(downsamples):
        w, h = max(1, layout.width // ds), max(1, layout.height // ds)
        frames = list(_frames(layout, w, h, ds, tile))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(VL_WHOLE_SLIDE_MICROSCOPY)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
        data = _image_dataset(meta, study_uid, series_uid, frame_of_reference, k + 1)
        data.ImageType = (
            ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if ds == 1 else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        )
        data.Rows = data.Columns = tile
        data.TotalPixelMatrixColumns, data.TotalPixelMatrixRows = w, h
        data.TotalPixelMatrixFocalPlanes = 1
        data.NumberOfFrames = len(frames)
        data.DimensionOrganizationType = "TILED_FULL"
        data.ContainerIdentifier = container or "SLIDE"
        measures = Dataset()
        measures.PixelSpacing = [mpp * ds / 1000, mpp * ds / 1000]  # mm: row spacing, column spacing
        measures.SliceThickness = 0.004
        shared = Dataset()
        shared.PixelMeasuresSequence = DicomSequence([measures])
        data.SharedFunctionalGroupsSequence = DicomSequence([shared])
        _set_pixels(data, frames, jpeg, quality)
        path = folder / f"{prefix}-{k}.dcm"
        data.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_secondary_capture(path: str | Path, pixels: np.ndarray) -> Path:
    """A plain (non-WSI) DICOM image, such as a photo of the slide label kept beside the series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = _image_dataset(meta, generate_uid(), generate_uid(), generate_uid(), 1, modality="OT")
    data.Rows, data.Columns = pixels.shape[:2]
    _set_pixels(data, [np.ascontiguousarray(pixels, dtype=np.uint8)], jpeg=False, quality=90)
    data.save_as(Path(path), enforce_file_format=True)
    return Path(path)


def _image_dataset(meta: FileMetaDataset, study: str, series: str, frame_of_reference: str, number: int, modality="SM"):
    data = Dataset()
    data.file_meta = meta
    data.SOPClassUID = meta.MediaStorageSOPClassUID
    data.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    data.StudyInstanceUID, data.SeriesInstanceUID = study, series
    data.FrameOfReferenceUID = frame_of_reference
    data.Modality = modality
    data.InstanceNumber = number
    data.SamplesPerPixel = 3
    data.PlanarConfiguration = 0
    data.BitsAllocated, data.BitsStored, data.HighBit, data.PixelRepresentation = 8, 8, 7, 0
    return data


def _set_pixels(data: Dataset, frames: list[np.ndarray], jpeg: bool, quality: int) -> None:
    if not jpeg:
        data.PhotometricInterpretation = "RGB"
        data.PixelData = np.stack(frames).tobytes()
        return
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling="4:2:2")
        encoded.append(buffer.getvalue())
    data.PhotometricInterpretation = "YBR_FULL_422"
    data.LossyImageCompression = "01"
    data.PixelData = encapsulate(encoded)
    data["PixelData"].VR = "OB"


def _frames(layout: SlideRenderer, w: int, h: int, ds: int, tile: int) -> Iterator[np.ndarray]:
    """TILED_FULL order: row by row of tiles; edge tiles padded with glass."""
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            bw, bh = min(tile, w - tx), min(tile, h - ty)
            block = np.empty((tile, tile, 3), dtype=np.uint8)
            block[:] = GLASS_RGB
            block[:bh, :bw] = layout.render(tx * ds, ty * ds, bw, bh, ds)
            yield block
