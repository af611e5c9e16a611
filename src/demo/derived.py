"""What a model that reads its input writes: objects on the input's patient, study and frame
of reference that reference the input's instances, as segmentation and contouring models
do. The stand-in makes them with `derive_from_input` (de-identification's tests need a
result that points back at what was sent).

- a derived CT series: one instance per input instance, each with its Source Image
  Sequence and Referenced Image Sequence;
- a Segmentation (SEG): its Referenced Series Sequence lists every input instance;
- an RT Structure Set: its Referenced Frame of Reference Sequence reaches every input
  instance through study, series and contour image sequences, and its ROI names the frame
  of reference.
"""

from __future__ import annotations

import io
import tarfile
import zipfile

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    SegmentationStorage,
    generate_uid,
)

File = tuple[str, bytes]
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
           "FrameOfReferenceUID")  # fmt: skip


def derived_outputs(inputs: list[Dataset]) -> list[File]:
    """The files a model writes for these input instances (one study, one series)."""
    if not inputs:
        return []
    files = [_encode(f"derived-{n}.dcm", _derived_ct(source, n)) for n, source in
             enumerate(inputs, 1)]  # fmt: skip
    files.append(_encode("seg.dcm", _seg(inputs)))
    files.append(_encode("rtstruct.dcm", _rtstruct(inputs)))
    return files


def archive_datasets(data: bytes) -> list[Dataset]:
    """Every DICOM file of a submitted archive (a zip or a tar), read whole."""
    found: list[Dataset] = []
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            blobs = [archive.read(info) for info in archive.infolist() if not info.is_dir()]
    else:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            blobs = [archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()]  # type: ignore[union-attr]
    for blob in blobs:
        found.append(dcmread(io.BytesIO(blob)))
    return found


def _base(source: Dataset, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = generate_uid(), modality, 901
    for keyword in _COPIED:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]
    ds.SeriesDescription = f"ISDR stand-in {modality}"
    return ds


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _derived_ct(source: Dataset, number: int) -> Dataset:
    ds = _base(source, CTImageStorage, "CT")
    ds.InstanceNumber, ds.ImageType = number, ["DERIVED", "SECONDARY"]
    ds.SourceImageSequence = Sequence([_reference(source)])
    ds.ReferencedImageSequence = Sequence([_reference(source)])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                    "PixelData"):  # fmt: skip
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]
    return ds


def _seg(inputs: list[Dataset]) -> Dataset:
    ds = _base(inputs[0], SegmentationStorage, "SEG")
    series = Dataset()
    series.SeriesInstanceUID = inputs[0].SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([_reference(s) for s in inputs])
    ds.ReferencedSeriesSequence = Sequence([series])
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel = 1, "stand-in organ"
    ds.SegmentSequence = Sequence([segment])
    return ds


def _rtstruct(inputs: list[Dataset]) -> Dataset:
    first = inputs[0]
    ds = _base(first, RTStructureSetStorage, "RTSTRUCT")
    ds.StructureSetLabel = "stand-in"
    images = Dataset()
    images.SeriesInstanceUID = first.SeriesInstanceUID
    images.ContourImageSequence = Sequence([_reference(s) for s in inputs])
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([images])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.get("FrameOfReferenceUID", "")
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 1, "stand-in organ"
    roi.ReferencedFrameOfReferenceUID = first.get("FrameOfReferenceUID", "")
    ds.StructureSetROISequence = Sequence([roi])
    return ds


def _encode(name: str, ds: Dataset) -> File:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return name, buffer.getvalue()
