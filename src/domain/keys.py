"""The tags an instance is sorted, grouped and matched by."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SortKeys:
    """The tags an instance is sorted by; strings, empty when the tag is absent."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    study_description: str
    series_description: str
    # Where the instance sits in a stack: DICOM's own text, "" when absent.
    image_position: str = ""
    image_orientation: str = ""
    images_in_acquisition: int | None = None
    temporal_positions: int | None = None
