"""Re-identify one object of a de-identified job's output in place, or say why it must not
be delivered.

Every element at every depth, and the file meta, is walked: a UID the job replaced gets
its original back; the patient's and study's attributes are those of the input again;
the dates the job sent (shifted) move back. The model's own new UIDs (its series, its
instances) stay. An object is refused (it may be another patient's result) when its
PatientID is not the job's pseudonym, its StudyInstanceUID is not the study the job sent,
its FrameOfReferenceUID is not one the job sent, or a reference inside its sequences (to a
study, series, instance or frame of reference) names a UID that neither the job sent nor
an accepted object of the output gives itself. The model's other new UIDs (a dimension
organisation, a tracking UID) stay as they are.
"""

from __future__ import annotations

from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from isdr.deid.profile import is_dicom_uid, many, shift
from isdr.deid.pseudonyms import Pseudonyms

_DEID_MARKS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


_OBJECT_UIDS = frozenset({
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "SourceFrameOfReferenceUID", "RelatedFrameOfReferenceUID",
})  # fmt: skip


class Refused(Exception):
    """The object must not be delivered: why, in words (no patient data in it)."""


def own_uids(dataset: Dataset) -> set[str]:
    """The UIDs an output object gives itself (its instance and its series)."""
    return {
        str(dataset.get(keyword, ""))
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID")
        if dataset.get(keyword)
    }


def check(
    dataset: Dataset, names: Pseudonyms, own: set[str], back: dict[str, str] | None = None
) -> None:
    """Refused when the object does not belong to the job's patient, study and images.
    `back`: names.originals(), when the caller has it already."""
    back = names.originals() if back is None else back
    if str(dataset.get("PatientID", "") or "") != names.patient:
        raise Refused("its PatientID is not the pseudonym the job sent: another patient's?")
    study = str(dataset.get("StudyInstanceUID", "") or "")
    if names.kinds.get(study) != "study":
        raise Refused("its StudyInstanceUID is not the study the job sent")
    frame = str(dataset.get("FrameOfReferenceUID", "") or "")
    if frame and frame not in back:
        raise Refused("its FrameOfReferenceUID is not one the job sent")
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _check_inside(item, back, own, element.keyword or str(element.tag))


def _check_inside(item: Dataset, back: dict[str, str], own: set[str], where: str) -> None:
    for element in item:
        if element.VR == "SQ":
            for inner in element.value:
                _check_inside(inner, back, own, where)
        elif element.VR == "UI" and _points_at_an_object(element.keyword or ""):
            values = element.value if many(element.value) else [element.value]
            for value in map(str, values):
                if value and not is_dicom_uid(value) and value not in back and value not in own:
                    keyword = element.keyword or str(element.tag)
                    raise Refused(f"its {where} > {keyword} points at an object the job never sent")


def _points_at_an_object(keyword: str) -> bool:
    """Whether a UID inside a sequence names another object (a study, series, instance
    or frame of reference): those must be known. Others (a dimension organisation, a
    tracking UID) may be the model's own."""
    if keyword.startswith("Referenced"):
        return "SOPClass" not in keyword and "TransferSyntax" not in keyword
    return keyword in _OBJECT_UIDS


def reidentify(
    dataset: Dataset, names: Pseudonyms, own: set[str], back: dict[str, str] | None = None
) -> None:
    """Put the object back on the job's patient and study (in place); Refused when it
    does not belong to them (see `check`). `own`: the UIDs the accepted objects of the
    output give themselves; `back`: names.originals(), when the caller has it already."""
    back = names.originals() if back is None else back
    check(dataset, names, own, back)
    with config.disable_value_validation():  # pydicom would log a bad value: patient data
        _walk(dataset, back, names)
        meta = getattr(dataset, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            value = str(meta.MediaStorageSOPInstanceUID)
            meta.MediaStorageSOPInstanceUID = back.get(value, value)
        for keyword, value in names.identity.items():
            setattr(dataset, keyword, value)
        for keyword in _DEID_MARKS:
            if keyword in dataset:
                delattr(dataset, keyword)


def _walk(dataset: Dataset, back: dict[str, str], names: Pseudonyms) -> None:
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value:
                _walk(item, back, names)
        elif element.VR == "UI":
            element.value = _uids(element, back)
        elif names.shift_days and element.VR in ("DA", "DT") and element.value:
            element.value = _dates_back(element.value, element.VR, names)


def _dates_back(value: Any, vr: str, names: Pseudonyms) -> Any:
    if many(value):
        return [_dates_back(v, vr, names) for v in value]
    text = str(value)
    return shift(text, vr, -names.shift_days) if names.sent_date(text) else value


def _uids(element: DataElement, back: dict[str, str]) -> Any:
    values = element.value
    if many(values):
        return [back.get(str(v), str(v)) for v in values]
    return back.get(str(values), values)
