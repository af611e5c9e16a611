"""De-identification (PS3.15 E.1-1) and re-identification of single data sets."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage

from isdr.deid.profile import deidentify, pixel_risk, shift
from isdr.deid.pseudonyms import Pseudonyms
from isdr.deid.reidentify import Refused, own_uids, reidentify
from isdr.domain.deid import Deidentify, options_of

NAME, PID, ACCESSION = "Doe^Jane^Q", "PID-7731-XYZ", "ACC-99812"
INSTITUTION, PHYSICIAN, OPERATOR = "Saint Example Hospital", "House^Gregory", "Tech^Tina"
STUDY_UID, SERIES_UID, SOP_UID = "1.2.826.0.1.99.1", "1.2.826.0.1.99.2", "1.2.826.0.1.99.3"
FRAME_UID, OTHER_UID = "1.2.826.0.1.99.4", "1.2.826.0.1.99.5"
SECRETS = (NAME, "Doe", PID, ACCESSION, INSTITUTION, PHYSICIAN, OPERATOR, "19710203",
           "20260411", "Lung screening Jane", "Chest CT follow-up", "private secret",
           "SN-44120", "CT-ROOM-2", "Main Street 1", STUDY_UID, SERIES_UID, SOP_UID,
           FRAME_UID, OTHER_UID, "STUDY-77")  # fmt: skip


def identified() -> Dataset:
    """A CT header with identifying values everywhere the profile names, nested too."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, SOP_UID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        STUDY_UID, SERIES_UID, FRAME_UID,
    )  # fmt: skip
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, "19710203"
    ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "055Y", "61.5"
    ds.PatientAddress, ds.OtherPatientIDs = "Main Street 1", "PID-7731-XYZ"
    ds.AccessionNumber, ds.StudyID = ACCESSION, "STUDY-77"
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = "20260411", "20260411", "20260411"
    ds.StudyTime, ds.AcquisitionDateTime = "101500", "20260411101600"
    ds.StudyDescription, ds.SeriesDescription = "Lung screening Jane", "Chest CT follow-up"
    ds.InstitutionName, ds.InstitutionAddress = INSTITUTION, "Main Street 1"
    ds.ReferringPhysicianName, ds.PerformingPhysicianName = PHYSICIAN, PHYSICIAN
    ds.OperatorsName, ds.StationName, ds.DeviceSerialNumber = OPERATOR, "CT-ROOM-2", "SN-44120"
    ds.Modality, ds.Manufacturer, ds.SliceThickness = "CT", "ACME", "1.25"
    request = Dataset()
    request.AccessionNumber, request.RequestingPhysician = ACCESSION, PHYSICIAN
    request.StudyInstanceUID = STUDY_UID
    ds.RequestAttributesSequence = Sequence([request])
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = CTImageStorage, OTHER_UID
    ds.ReferencedImageSequence = Sequence([reference])
    ds.add_new(0x00090010, "LO", "ACME 1.0")  # a private creator, of block 0x10
    ds.add_new(0x00091011, "LO", "private secret")
    ds.add_new(0x00091012, "DS", "3.5")
    return ds


def every_value(ds: Dataset) -> Iterator[str]:
    """The text of every element, at every depth, and of the file meta."""
    for element in [*ds.file_meta, *ds] if hasattr(ds, "file_meta") else ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from every_value(item)
        else:
            yield str(element.value)


def test_no_identifying_value_survives_anywhere() -> None:
    ds, names = identified(), Pseudonyms()
    deidentify(ds, names, Deidentify())
    text = "\n".join(every_value(ds))
    assert [secret for secret in SECRETS if secret in text] == []
    assert ds.PatientID == ds.PatientName == names.patient
    assert ds.PatientIdentityRemoved == "YES" and "2026c" in ds.DeidentificationMethod
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (
        ds.SOPClassUID == CTImageStorage
        and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    )
    assert all(uid.startswith("2.25.") for uid in names.uids.values())


def test_uids_are_replaced_consistently_at_every_depth() -> None:
    first, second, names = identified(), identified(), Pseudonyms()
    second.SOPInstanceUID = OTHER_UID
    second.ReferencedImageSequence[0].ReferencedSOPInstanceUID = SOP_UID
    deidentify(first, names, Deidentify())
    deidentify(second, names, Deidentify())
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert "RequestAttributesSequence" not in first  # X in the table
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != SERIES_UID
    assert Pseudonyms().uid(SOP_UID) != names.uid(SOP_UID)  # fresh, never derived


def test_the_options_keep_what_a_model_needs_and_nothing_else() -> None:
    options = Deidentify(
        retain_dates=True, retain_patient_characteristics=True, retain_device_identity=True,
        series_descriptions=["chest ct follow-up"], private_tags=["ACME 1.0:0009,12"],
    )  # fmt: skip
    ds, names = identified(), Pseudonyms()
    deidentify(ds, names, options)
    assert (ds.PatientSex, ds.PatientAge, ds.PatientWeight) == ("F", "055Y", "61.5")
    assert (ds.DeviceSerialNumber, ds.StationName) == ("SN-44120", "CT-ROOM-2")
    assert ds.SeriesDescription == "Chest CT follow-up"
    assert ds.StudyDate == shift("20260411", "DA", names.shift_days) != "20260411"
    assert ds.AcquisitionDateTime == shift("20260411101600", "DT", names.shift_days)
    assert ds.StudyTime == "101500" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert 0x00091012 in ds and 0x00090010 in ds and 0x00091011 not in ds
    assert "InstitutionName" not in ds or ds.InstitutionName != INSTITUTION
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107", "113108", "113109", "113105", "113111"}
    other = identified()
    other.SeriesDescription = "Jane's own protocol"
    deidentify(other, names, options)
    assert "SeriesDescription" not in other or "Jane" not in str(other.SeriesDescription)


def test_the_format_refuses_a_bad_private_key_and_true_means_the_defaults() -> None:
    with pytest.raises(ValueError, match="CREATOR:gggg,ee"):
        Deidentify(private_tags=["ACME 0009,12"])
    assert options_of(True) == Deidentify() and options_of(False) is None


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"BurnedInAnnotation": "YES"}, "BurnedInAnnotation"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "may show text"),
        ({"Modality": "US"}, "modality (US)"),
    ],
)
def test_pixels_that_may_show_identity_are_named(changes: dict[str, str], said: str) -> None:
    ds = identified()
    assert pixel_risk(ds) is None
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    risk = pixel_risk(ds)
    assert risk is not None and said in risk


def derived(sent: Dataset) -> Dataset:
    """What a model sends back: a SEG on the de-identified input, with new UIDs."""
    seg = Dataset()
    seg.file_meta = FileMetaDataset()
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = "2.25.1234"
    seg.SeriesInstanceUID = "2.25.5678"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "FrameOfReferenceUID",
                    "StudyDate"):  # fmt: skip
        setattr(seg, keyword, getattr(sent, keyword))
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = (
        CTImageStorage,
        sent.SOPInstanceUID,
    )
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedInstanceSequence = sent.SeriesInstanceUID, [source]
    seg.ReferencedSeriesSequence = Sequence([series])
    seg.ContentDate = sent.StudyDate
    return seg


def test_a_result_comes_back_to_the_original_patient_study_and_images() -> None:
    ds, names = identified(), Pseudonyms()
    deidentify(ds, names, Deidentify(retain_dates=True))
    seg = derived(ds)
    reidentify(seg, names, own_uids(seg))
    assert (seg.PatientName, seg.PatientID, seg.AccessionNumber) == (NAME, PID, ACCESSION)
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_UID
    series = seg.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == SERIES_UID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == SOP_UID
    assert seg.SOPInstanceUID == seg.file_meta.MediaStorageSOPInstanceUID == "2.25.1234"
    assert seg.StudyDate == "20260411" and seg.ContentDate == "20260411"
    assert "PatientIdentityRemoved" not in seg


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda seg: setattr(seg, "PatientID", "SOMEONE-ELSE"), "PatientID"),
        (lambda seg: setattr(seg, "StudyInstanceUID", "2.25.42"), "StudyInstanceUID"),
        (
            lambda seg: setattr(
                seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0],
                "ReferencedSOPInstanceUID",
                "2.25.777",
            ),
            "never sent",
        ),
    ],
)
def test_a_result_that_is_not_the_jobs_is_refused(spoil: Any, said: str) -> None:
    ds, names = identified(), Pseudonyms()
    deidentify(ds, names, Deidentify())
    seg = derived(ds)
    spoil(seg)
    with pytest.raises(Refused, match=said):
        reidentify(copy.deepcopy(seg), names, own_uids(seg))


def test_the_pseudonyms_survive_a_trip_through_json() -> None:
    ds, names = identified(), Pseudonyms()
    deidentify(ds, names, Deidentify(retain_dates=True))
    again = Pseudonyms.from_json(names.to_json())
    assert again == names
