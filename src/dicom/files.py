"""Telling the DICOM files of an output from the rest, by their file meta group."""

from __future__ import annotations

from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from isdr.domain.output import OutputRecord


def describe(root: Path, path: Path) -> OutputRecord:
    """What `path` (a file under `root`) is."""
    name = path.relative_to(root).as_posix()
    size = path.stat().st_size
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError):
        return OutputRecord(name, size)
    return OutputRecord(
        name,
        size,
        str(meta.get("MediaStorageSOPClassUID", "") or ""),
        str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
        str(meta.get("TransferSyntaxUID", "") or ""),
    )
