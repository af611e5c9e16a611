"""Synthetic DICOM series for the tests, the benchmark and the demo. Never patient data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

MODALITY_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


@dataclass(frozen=True)
class SeriesSpec:
    """What a synthetic series looks like."""

    modality: str = "CT"
    count: int = 3
    rows: int = 64
    columns: int = 64
    patient_id: str = "ISDR-TEST-0001"
    patient_name: str = "Test^Synthetic"
    study_description: str = "Synthetic study"
    series_description: str = "Synthetic series"
    study_instance_uid: str = ""
    series_instance_uid: str = ""


def make_instance(spec: SeriesSpec, index: int, study_uid: str, series_uid: str) -> Dataset:
    """One image of the series, with a file meta group, in Explicit VR Little Endian."""
    sop_class = MODALITY_SOP_CLASS.get(spec.modality, CTImageStorage)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.Modality = spec.modality
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = spec.series_description
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = _pixels(spec.rows, spec.columns, index)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _pixels(rows: int, columns: int, index: int) -> bytes:
    """A phantom in CT numbers that differs per slice: air around an oval body of soft
    tissue, a spine, and an organ that moves from slice to slice (smooth, compressible)."""
    y, x = np.ogrid[:rows, :columns]
    size = min(rows, columns)
    image = np.full((rows, columns), -1000, dtype="<i2")
    body = ((y - rows / 2) / (0.42 * rows)) ** 2 + ((x - columns / 2) / (0.46 * columns)) ** 2
    image[body <= 1] = 40
    spine = (y - rows * 0.72) ** 2 + (x - columns / 2) ** 2 <= (0.07 * size) ** 2
    image[spine] = 700
    shift = 0.1 * size * ((index % 20) / 20)
    organ = (y - rows * 0.42) ** 2 + (x - columns * 0.36 - shift) ** 2 <= (0.13 * size) ** 2
    image[organ] = 150
    return image.tobytes()


def write_series(folder: Path, spec: SeriesSpec) -> list[Path]:
    """Write a whole series as Part 10 files into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = spec.study_instance_uid or generate_uid()
    series_uid = spec.series_instance_uid or generate_uid()
    paths = []
    for index in range(spec.count):
        ds = make_instance(spec, index, study_uid, series_uid)
        path = folder / f"{spec.modality}_{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
