"""What a model that reads its input writes: objects on the input's patient, study and frame
of reference that reference the input's instances, as segmentation and contouring models
do. The stand-in makes them with `derive_from_input` (de-identification's tests need a
result that points back at what was sent).

- a derived CT series: one instance per input instance, each with its Source Image
  Sequence and Referenced Image Sequence;
- a Segmentation (SEG), made by highdicom: it references every input instance (its
  Referenced Series Sequence, each frame's Source Image Sequence), on the input's frame of
  reference;
- an RT Structure Set: its Referenced Frame of Reference Sequence reaches every input
  instance through study, series and contour image sequences, and its ROI names the frame
  of reference.
"""

from __future__ import annotations

import io
import tarfile
import zipfile

import highdicom as hd
import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
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
    """A binary SEG of a square in the middle of every input slice, made by highdicom as
    segmentation models make theirs."""
    sources = sorted((_with_type_2(ds) for ds in inputs),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))  # fmt: skip
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=bool)
    rows, columns = sources[0].Rows, sources[0].Columns
    mask[:, rows // 4 : rows // 2, columns // 4 : columns // 2] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ISDR stand-in", version="1",
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
    )  # fmt: skip
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="stand-in organ",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )  # fmt: skip
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=generate_uid(), series_number=902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="ISDR",
        manufacturer_model_name="stand-in", software_versions="1", device_serial_number="1",
    )  # fmt: skip


_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")  # fmt: skip


def _with_type_2(source: Dataset) -> Dataset:
    """A shallow copy with the type 2 attributes a SEG copies from its source present
    (empty when the source lacks them, as after de-identification)."""
    found = source.copy()
    for keyword in _TYPE_2:
        if keyword not in found:
            setattr(found, keyword, "")
    return found


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
