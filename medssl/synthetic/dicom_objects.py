"""DICOM objects that sit next to image series in a PACS export, with known content, for tests and demos.

:func:`~medssl.synthetic.volumes.write_dicom_series` writes the image series; these helpers add what a
radiotherapy or research export carries beside it: an RT Dose grid (not an image), an RT Structure Set
with closed planar contours in patient coordinates (LPS mm), and a DICOM SEG made with highdicom from
the series' own files. Each one references its series by UIDs, as real objects do, so the checks that
a label belongs to its image can be exercised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def read_series(folder: str | Path) -> list:
    """The pydicom datasets of a series folder written by ``write_dicom_series``, in file-name order."""
    import pydicom

    return [pydicom.dcmread(path) for path in sorted(Path(folder).glob("*.dcm"))]


def write_rtdose(
    path: str | Path,
    reference,
    shape: Sequence[int] = (8, 8, 3),
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> Path:
    """An RT Dose grid (``shape`` = columns, rows, frames; ``spacing`` mm) in the patient, study and
    frame of reference of ``reference`` (a dataset of the image series), built on pydicom's shipped
    rtdose.dcm. A dose grid is a multi-frame array with a geometry, which a reader happily loads as
    a volume; it is not an image of the patient."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template_path = get_testdata_file("rtdose.dcm")
    if not isinstance(template_path, str):
        raise FileNotFoundError("pydicom's test file rtdose.dcm is missing; reinstall pydicom")
    ds = pydicom.dcmread(template_path)
    columns, rows, frames = (int(n) for n in shape)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, keyword, getattr(reference, keyword))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
    ds.ImagePositionPatient = [float(v) for v in origin]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.GridFrameOffsetVector = [float(k * spacing[2]) for k in range(frames)]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(frames * rows * columns, dtype=np.uint16).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rtstruct(
    path: str | Path,
    series: Sequence,
    rois: Mapping[str, Sequence[np.ndarray]],
    referenced_series_uid: str | None = None,
) -> Path:
    """An RT Structure Set over the image ``series`` (its pydicom datasets): one ROI per entry of
    ``rois`` (name → closed planar contours, each ``[N, 3]`` patient coordinates in mm, LPS), numbered
    from 1 in order. ``referenced_series_uid`` overrides the series it says it was drawn on."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    first = series[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StructureSetLabel = "RTSTRUCT", "medssl test"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 99
    frame_uid = first.FrameOfReferenceUID

    contour_images = DicomSequence(
        [_item(ReferencedSOPClassUID=d.SOPClassUID, ReferencedSOPInstanceUID=d.SOPInstanceUID) for d in series]
    )
    referenced_series = _item(
        SeriesInstanceUID=referenced_series_uid or first.SeriesInstanceUID, ContourImageSequence=contour_images
    )
    study = _item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
        ReferencedSOPInstanceUID=first.StudyInstanceUID,
        RTReferencedSeriesSequence=DicomSequence([referenced_series]),
    )
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [_item(FrameOfReferenceUID=frame_uid, RTReferencedStudySequence=DicomSequence([study]))]
    )
    ds.StructureSetROISequence = DicomSequence(
        [
            _item(
                ROINumber=number, ROIName=name, ReferencedFrameOfReferenceUID=frame_uid, ROIGenerationAlgorithm="MANUAL"
            )
            for number, name in enumerate(rois, start=1)
        ]
    )
    contour_items = []
    for number, contours in enumerate(rois.values(), start=1):
        contours_seq = DicomSequence()
        for points in contours:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
            contours_seq.append(
                _item(
                    ContourGeometricType="CLOSED_PLANAR",
                    NumberOfContourPoints=len(points),
                    ContourData=[float(v) for v in points.ravel()],
                )
            )
        contour_items.append(
            _item(ReferencedROINumber=number, ROIDisplayColor=[255, 0, 0], ContourSequence=contours_seq)
        )
    ds.ROIContourSequence = DicomSequence(contour_items)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_seg(path: str | Path, series: Sequence, masks: Mapping[str, np.ndarray]) -> Path:
    """A binary DICOM SEG (highdicom) over the image ``series`` (its pydicom datasets, one per slice):
    one segment per entry of ``masks`` (name → boolean ``[frames, rows, columns]`` in the order of
    ``series``), numbered from 1 in order."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medssl test", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.cid7166.ConnectiveTissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(masks, start=1)
    ]
    pixels = np.stack([np.asarray(m, dtype=bool) for m in masks.values()], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=list(series),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=98,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medssl",
        manufacturer_model_name="synthetic",
        software_versions="1",
        device_serial_number="0",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _item(**values):
    """A pydicom sequence item with these keyword values."""
    from pydicom.dataset import Dataset

    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item
