"""De-identify one data set in place: the Basic Application Level Confidentiality Profile
(isdr.deid.table) with the options a fingerprint asks for (isdr.domain.deid.Deidentify).

- Every element, at every depth of every sequence, gets its table action.
- Every UID that is not one of DICOM's own (SOP classes, transfer syntaxes, ... under
  1.2.840.10008.) is replaced, consistently within the job (Pseudonyms.uid), wherever it
  is, in the table or not: references inside sequences keep pointing at the right object,
  and MediaStorageSOPInstanceUID follows SOPInstanceUID.
- PatientName and PatientID become the job's patient pseudonym.
- Private elements go, but those the fingerprint allows by name.
- The data set says it was de-identified (PatientIdentityRemoved, the method, its codes).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from isdr.deid.pseudonyms import IDENTITY, Pseudonyms, fresh_shift
from isdr.deid.table import action_of
from isdr.domain.deid import Deidentify

METHOD = "ISDR: PS3.15 E.1-1 (2026c) Basic Profile"  # LO: 64 characters at most
DICOM_ROOT = "1.2.840.10008."  # DICOM's own UIDs: kept as they are
PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
SERIES_DESCRIPTION = 0x0008103E
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
# The file meta a Part 10 file needs: version, SOP class and instance, transfer syntax,
# implementation class and version. The rest (the sender's AE title, ...) goes.
FILE_META_KEPT = frozenset({0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013})
# The table's action whatever the options: a birth date (even shifted, with the age) comes
# too close to naming the patient.
NEVER_RETAINED = frozenset({0x00100030, 0x00100032})
# Elements the table does not list but that may hold anything: removed (a name: the dummy).
_DENIED = ("PN", "UR", "UT", "LT", "ST", "UC", "UN")  # UN: bytes no one can read
_TEXT = ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT")

# Retain Patient Characteristics Option (Table E.1-1's column): sex, age, size, weight, ...
PATIENT_CHARACTERISTICS = frozenset({
    0x00100040, 0x00101010, 0x00101020, 0x00101030, 0x00102160, 0x001021A0, 0x001021C0,
    0x00102203,
})  # fmt: skip
# Retain Device Identity Option: serial numbers, station and device names (UIDs still go).
DEVICE_IDENTITY = frozenset({
    0x00181000, 0x00081010, 0x00181004, 0x00181005, 0x00181007, 0x00181008, 0x0018700A,
    0x00500020, 0x3010002D, 0x00189371, 0x00189373,
})  # fmt: skip
DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED",
    "PN": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000",
    "UC": "ANONYMIZED", "UT": "ANONYMIZED", "UR": "", "FL": 0.0, "FD": 0.0, "SL": 0,
    "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0,
}  # fmt: skip
# PS3.16 CID 7050: the profile and each option applied.
_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "series_descriptions": ("113105", "Clean Descriptors Option"),
    "private_tags": ("113111", "Retain Safe Private Option"),
}


def is_dicom_uid(value: str) -> bool:
    """Whether a UID is one of DICOM's own (a SOP class, a transfer syntax, a context
    group, ...): those name no patient and stay."""
    return value.startswith(DICOM_ROOT)


def keep_identity(dataset: Dataset, names: Pseudonyms) -> None:
    """Remember the patient's and study's attributes of the first instance seen, to put
    them back on what comes back."""
    for keyword in IDENTITY:
        if keyword not in names.identity and keyword in dataset:
            value = dataset.data_element(keyword)
            if value is not None and value.VR != "SQ":
                names.identity[keyword] = _plain(value.value)


def deidentify(dataset: Dataset, names: Pseudonyms, options: Deidentify) -> None:
    """De-identify `dataset` (and its file meta) in place, recording what was replaced."""
    if options.retain_dates and not names.shift_days:
        names.shift_days = fresh_shift()
    with config.disable_value_validation():  # pydicom would log a bad value: patient data
        keep_identity(dataset, names)
        _note_kinds(dataset, names)
        walk = _Walk(names, options)
        walk.items(dataset)
        _file_meta(dataset, names)
        _drop_text_naming(dataset, _originals_of(names, walk.seen))
        _say_so(dataset, options, names)
    dataset.preamble = None  # written as zeros


def _note_kinds(dataset: Dataset, names: Pseudonyms) -> None:
    """Remember which originals are the study, a series, an instance, a frame of
    reference: what comes back must name a study the job sent as its study."""
    kinds = (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series"),
             ("SOPInstanceUID", "instance"), ("FrameOfReferenceUID", "frame"))  # fmt: skip
    for keyword, kind in kinds:
        value = str(dataset.get(keyword, "") or "")
        if value and not is_dicom_uid(value):
            names.kinds[names.uid(value)] = kind


def _file_meta(dataset: Dataset, names: Pseudonyms) -> None:
    """Only what a Part 10 file needs stays in the file meta (the sender's AE title, its
    address and private meta go); the instance's UID follows its SOPInstanceUID."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        return
    for element in list(meta):
        if int(element.tag) not in FILE_META_KEPT:
            del meta[element.tag]
    if MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
        element = meta[MEDIA_STORAGE_SOP_INSTANCE_UID]
        element.value = names.uid(str(element.value))


def _originals_of(names: Pseudonyms, seen: set[str]) -> tuple[str, ...]:
    """Texts that must not survive anywhere in an instance: its original UIDs (`seen`;
    not the whole job's, which would cost per instance as much as the job has), the
    patient's ID and name, the accession number."""
    found = [*seen]
    for keyword in ("PatientID", "AccessionNumber", "PatientName"):
        value = names.identity.get(keyword)
        if isinstance(value, str) and len(value.strip("^ ")) >= 3:
            found.append(value.strip())
    return tuple(found)


def _drop_text_naming(dataset: Dataset, originals: tuple[str, ...]) -> None:
    """Remove any text element, at any depth, that still holds an original UID or the
    patient's ID, name or accession number (a URL to the PACS, a free comment)."""
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value:
                _drop_text_naming(item, originals)
        elif element.VR in _TEXT and element.value is not None:
            text = str(element.value)
            if any(original and original in text for original in originals):
                del dataset[element.tag]


class _Walk:
    """One pass over a data set and its sequences."""

    def __init__(self, names: Pseudonyms, options: Deidentify) -> None:
        self.names = names
        self.options = options
        self.private = options.private_allowed()
        self.seen: set[str] = set()  # the original UIDs it replaced

    def items(self, dataset: Dataset) -> None:
        creators = _private_creators(dataset)
        for element in list(dataset):
            tag = int(element.tag)
            if element.tag.is_private:
                if not self._private_kept(tag, creators):
                    del dataset[tag]
                elif element.VR == "SQ":
                    self._sequence(element)
                elif element.VR == "UI":
                    element.value = self._uids(element.value)
                continue
            self.element(dataset, element, tag)

    def element(self, dataset: Dataset, element: DataElement, tag: int) -> None:
        action = action_of(tag)
        if tag in (PATIENT_NAME, PATIENT_ID):
            element.value = self.names.patient
        elif self._retained(element, tag):
            if self.options.retain_dates and element.VR in ("DA", "DT"):
                element.value = shift(element.value, element.VR, self.names.shift_days)
                self.names.note_dates(element.value)
        elif element.VR == "UI":
            if action == "X":
                del dataset[tag]
            else:
                element.value = self._uids(element.value)
        elif element.VR == "SQ":
            if action == "X":
                del dataset[tag]
            elif action in (None, "X/Z/U*"):
                self._sequence(element)
            else:
                element.value = Sequence()
        elif action is not None:
            _act(dataset, element, tag, action)
        else:
            _unlisted(dataset, element, tag)

    def _retained(self, element: DataElement, tag: int) -> bool:
        options = self.options
        if tag in NEVER_RETAINED:
            return False
        if action_of(tag) is None:
            if element.VR in ("DA", "DT"):
                return options.retain_dates  # shifted; else removed (_unlisted)
            return element.VR not in ("UI", "SQ", *_DENIED)  # not listed: not identifying
        if tag == SERIES_DESCRIPTION:
            return options.keeps_description(str(element.value or ""))
        if options.retain_patient_characteristics and tag in PATIENT_CHARACTERISTICS:
            return True
        if options.retain_device_identity and tag in DEVICE_IDENTITY:
            return True
        return options.retain_dates and element.VR in ("DA", "DT", "TM")

    def _sequence(self, element: DataElement) -> None:
        for item in element.value:
            self.items(item)

    def _uids(self, value: Any) -> Any:
        if value is None or value == "":
            return value
        if many(value):
            return [self._uid(str(v)) for v in value]
        return self._uid(str(value))

    def _uid(self, value: str) -> str:
        if not value or is_dicom_uid(value):
            return value
        self.seen.add(value)
        return self.names.uid(value)

    def _private_kept(self, tag: int, creators: dict[int, str]) -> bool:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:  # a private creator: kept if one of its elements is
            creator = creators.get(tag, "")
            return any(c == creator and g == group for c, g, _e in self.private)
        creator = creators.get((group << 16) | (element >> 8), "")
        return (creator, group, element & 0xFF) in self.private


def _private_creators(dataset: Dataset) -> dict[int, str]:
    """Each private creator element's tag and its text."""
    found = {}
    for element in dataset:
        tag = int(element.tag)
        if element.tag.is_private and 0x0010 <= (tag & 0xFFFF) <= 0x00FF:
            found[tag] = str(element.value or "").strip()
    return found


def _unlisted(dataset: Dataset, element: DataElement, tag: int) -> None:
    """An element the table does not list, of a kind that may name someone: a person's
    name gets the dummy, free text, URLs and dates go."""
    if element.VR == "PN":
        element.value = DUMMY["PN"]
    else:
        del dataset[tag]


def _act(dataset: Dataset, element: DataElement, tag: int, action: str) -> None:
    if action == "X":
        del dataset[tag]
    elif action in ("Z", "X/Z"):
        element.value = None if element.VR not in DUMMY else _empty(element.VR)
    elif element.VR in DUMMY:  # D, X/D, Z/D, X/Z/D
        element.value = DUMMY[element.VR]
    else:
        del dataset[tag]  # bytes, or a VR with no dummy: nothing identifying is kept


def many(value: Any) -> bool:
    """Whether an element's value holds several values (a MultiValue or a list)."""
    return isinstance(value, (list, tuple, MultiValue))


def _empty(vr: str) -> Any:
    return None if isinstance(DUMMY[vr], (int, float)) else ""


def shift(value: Any, vr: str, days: int) -> Any:
    """A DA or DT value (or several) moved by `days`; one that does not parse becomes
    the dummy date."""
    if many(value):
        return [shift(v, vr, days) for v in value]
    text = str(value or "")
    if not text:
        return value
    try:
        moved = date(int(text[0:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return DUMMY[vr]
    return moved.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of an element's value."""
    if many(value):
        return [str(v) for v in value]
    if isinstance(value, (int, float)) or value is None:
        return value
    return str(value)


def _say_so(dataset: Dataset, options: Deidentify, names: Pseudonyms) -> None:
    dataset.PatientIdentityRemoved = "YES"
    applied = ["basic"] + [key for key in _CODES if key != "basic" and getattr(options, key)]
    dataset.DeidentificationMethod = METHOD  # the options are the codes below
    codes = Sequence()
    for key in applied:
        value, meaning = _CODES[key]
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    dataset.DeidentificationMethodCodeSequence = codes
    if names.shift_days:
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    elif not options.retain_dates:
        dataset.LongitudinalTemporalInformationModified = "REMOVED"


# SOP classes whose pixels may show identity (PS3.15 E.1.1: burned-in text): secondary
# captures, ultrasound, encapsulated documents, video and photographs.
_PIXEL_RISK = (
    "1.2.840.10008.5.1.4.1.1.7",  # secondary captures
    "1.2.840.10008.5.1.4.1.1.6.",  # ultrasound
    "1.2.840.10008.5.1.4.1.1.3.1",  # ultrasound multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.77.1.",  # visible light
)


def pixel_risk(dataset: Dataset) -> str | None:
    """Why the instance's pixels may carry identity, in words; None when nothing says so."""
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "BurnedInAnnotation is YES"
    if str(dataset.get("RecognizableVisualFeatures", "")).strip().upper() == "YES":
        return "RecognizableVisualFeatures is YES"
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class.startswith(_PIXEL_RISK):
        kind = getattr(dataset.SOPClassUID, "name", sop_class)
        return f"its kind ({kind}) may show text in its pixels"
    if str(dataset.get("Modality", "")).upper() in ("US", "SC", "DOC", "XC", "OT"):
        return f"its modality ({dataset.Modality}) may show text in its pixels"
    return None
