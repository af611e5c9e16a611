"""One file of a job's unpacked output: what it is, as recorded and as delivered."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputRecord:
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
