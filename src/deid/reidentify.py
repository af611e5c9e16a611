"""Re-identify one object of a de-identified job's output in place, or say why it must not
be delivered.

Every element at every depth, and the file meta, is walked: a UID the job replaced gets
its original back; the patient's and study's attributes are those of the input again;
dates move back by the job's shift. The model's own new UIDs (its series, its instances)
stay. An object that references a UID the job never sent, or whose patient or study is not
the job's, is refused: it may be another patient's result.
"""

from __future__ import annotations

from typing import Any

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
# UIDs that point at another object: each must be one the job sent (or one of the output's).
_NOT_REFERENCES = (
    "ReferencedSOPClassUID",
    "ReferencedSOPClassUIDInFile",
    "ReferencedTransferSyntaxUIDInFile",
    "ReferencedRelatedGeneralSOPClassUIDInFile",
)


class Refused(Exception):
    """The object must not be delivered: why, in words (no patient data in it)."""


def reidentify(dataset: Dataset, names: Pseudonyms, own: set[str]) -> None:
    """Put the object back on the job's patient and study (in place); Refused when it
    does not belong to them. `own`: the UIDs the output's objects give themselves (their
    SOP instances and series), which other objects of the output may reference."""
    _check_patient_and_study(dataset, names)
    back = names.originals()
    _walk(dataset, back, own, names.shift_days)
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        value = str(meta.MediaStorageSOPInstanceUID)
        meta.MediaStorageSOPInstanceUID = back.get(value, value)
    for keyword, value in names.identity.items():
        setattr(dataset, keyword, value)
    for keyword in _DEID_MARKS:
        if keyword in dataset:
            delattr(dataset, keyword)


def own_uids(dataset: Dataset) -> set[str]:
    """The UIDs an output object gives itself."""
    return {
        str(dataset.get(keyword, ""))
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID")
        if dataset.get(keyword)
    }


def _check_patient_and_study(dataset: Dataset, names: Pseudonyms) -> None:
    patient = str(dataset.get("PatientID", "") or "")
    if patient != names.patient:
        raise Refused("its PatientID is not the pseudonym the job sent: another patient's?")
    study = str(dataset.get("StudyInstanceUID", "") or "")
    if study not in names.originals():
        raise Refused("its StudyInstanceUID is not the study the job sent")


def _walk(dataset: Dataset, back: dict[str, str], own: set[str], days: int) -> None:
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value:
                _walk(item, back, own, days)
        elif element.VR == "UI":
            element.value = _uids(element, back, own)
        elif days and element.VR in ("DA", "DT") and element.value:
            element.value = shift(element.value, element.VR, -days)


def _uids(element: DataElement, back: dict[str, str], own: set[str]) -> Any:
    values = element.value
    several = many(values)
    found = [_uid(str(v), element, back, own) for v in (values if several else [values])]
    return found if several else found[0]


def _uid(value: str, element: DataElement, back: dict[str, str], own: set[str]) -> str:
    if not value or is_dicom_uid(value):
        return value
    if value in back:
        return back[value]
    keyword = element.keyword or ""
    is_reference = keyword.startswith("Referenced") or keyword in (
        "SourceFrameOfReferenceUID", "RelatedFrameOfReferenceUID", "StudyInstanceUID",
    )  # fmt: skip
    if is_reference and keyword not in _NOT_REFERENCES and value not in own:
        raise Refused(f"its {keyword or element.tag} references an object the job never sent")
    return value
