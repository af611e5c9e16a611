"""Telling the DICOM files of an output from the rest, by their file meta group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info


@dataclass(frozen=True)
class OutputInfo:
    """One file of an output; the UIDs are empty when it is not a DICOM file."""

    name: str  # relative to the output folder, with '/'
    size: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""

    @property
    def is_dicom(self) -> bool:
        """Whether it can be sent: a DICOM Part 10 file with the three UIDs it needs."""
        return bool(self.sop_class_uid and self.sop_instance_uid and self.transfer_syntax_uid)


def describe(root: Path, path: Path) -> OutputInfo:
    """What `path` (a file under `root`) is."""
    name = path.relative_to(root).as_posix()
    size = path.stat().st_size
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError):
        return OutputInfo(name, size)
    return OutputInfo(
        name,
        size,
        str(meta.get("MediaStorageSOPClassUID", "") or ""),
        str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
        str(meta.get("TransferSyntaxUID", "") or ""),
    )
