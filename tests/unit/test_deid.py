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
from isdr.domain.fingerprint import Fingerprint

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


SAMPLE: dict[str, Any] = {
    "AE": "NODE", "AS": "045Y", "CS": "VALUE", "DA": "20260411", "DS": "1.5",
    "DT": "20260411101500", "IS": "7", "LO": "secret", "LT": "secret", "PN": "Secret^Name",
    "SH": "secret", "ST": "secret", "TM": "101500", "UC": "secret", "UT": "secret",
    "UI": "1.2.826.0.1.99.77", "UL": 7, "US": 7, "FL": 1.5, "FD": 1.5, "SL": 7, "SS": 7,
}  # fmt: skip


def test_every_action_of_the_table_is_applied_to_every_tag_it_names() -> None:
    from pydicom.datadict import dictionary_VR

    from isdr.deid.profile import DUMMY
    from isdr.deid.table import ACTIONS

    tested = 0
    for tag, action in ACTIONS.items():
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue  # not in pydicom's dictionary
        if vr not in SAMPLE and vr != "SQ":
            continue  # bytes, or an ambiguous VR
        ds, names = Dataset(), Pseudonyms()
        if vr == "SQ":
            item = Dataset()
            item.ReferencedSOPInstanceUID = "1.2.826.0.1.99.78"
            ds.add_new(tag, vr, Sequence([item]))
        else:
            ds.add_new(tag, vr, SAMPLE[vr])
        deidentify(ds, names, Deidentify())
        tested += 1
        where = f"{tag:08X} ({action}, {vr})"
        if tag in (0x00100010, 0x00100020):
            assert ds[tag].value == names.patient, where
        elif action == "X":
            assert tag not in ds, where
        elif vr == "UI":
            assert str(ds[tag].value).startswith("2.25."), where
        elif vr == "SQ":
            kept = ds[tag].value
            if action == "X/Z/U*":
                assert kept[0].ReferencedSOPInstanceUID.startswith("2.25."), where
            else:
                assert len(kept) == 0, where
        elif action in ("Z", "X/Z"):
            assert ds[tag].value in (None, ""), where
        else:  # D, X/D, Z/D, X/Z/D
            assert ds[tag].value == DUMMY[vr], where
    assert tested > 500


def test_a_stable_patient_keeps_one_pseudonym_and_shift_across_studies(tmp_path: Any) -> None:
    from isdr.db.deid import patient
    from isdr.db.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'isdr.sqlite3'}")
    first = patient(engine, PID, "ISDR-AAAA", -100)
    assert patient(engine, PID, "ISDR-BBBB", -200) == first == ("ISDR-AAAA", -100)
    assert patient(engine, "another", "ISDR-CCCC", -300) == ("ISDR-CCCC", -300)


def test_the_pseudonyms_go_with_the_jobs_files(tmp_path: Any) -> None:
    from datetime import UTC, datetime

    from sqlalchemy.orm import Session

    from isdr.db import deid
    from isdr.db.delivery import mark_files_removed
    from isdr.db.engine import make_engine
    from isdr.db.models import Job, Series

    engine, now = make_engine(f"sqlite:///{tmp_path / 'isdr.sqlite3'}"), datetime.now(UTC)
    with Session(engine) as session, session.begin():
        series = Series(series_instance_uid="1.2", study_instance_uid="1.2", patient_id="P",
                        folder="f", first_received_at=now, last_received_at=now)  # fmt: skip
        session.add(series)
        session.flush()
        job = Job(series_id=series.id, fingerprint_name="f.json", state="delivered",
                  fingerprint=Fingerprint.model_validate({"model_human_readable_id": "m"}),
                  next_attempt_at=now, created_at=now, updated_at=now)  # fmt: skip
        session.add(job)
        session.flush()
        job_id = job.id
    deid.save(engine, job_id, Pseudonyms().to_json(), now)
    assert deid.load(engine, job_id) is not None
    mark_files_removed(engine, job_id, now)
    assert deid.load(engine, job_id) is None


def test_what_the_table_does_not_list_but_may_name_someone_goes_too() -> None:
    ds, names = identified(), Pseudonyms()
    ds.file_meta.SourceApplicationEntityTitle = "CT_STMARYS_3"
    ds.RetrieveURL = f"https://pacs.example.org/studies/{STUDY_UID}"
    ds.EvaluatorName = "Secret^Evaluator"
    ds.CalibrationDate = "20260411"
    issuer = Dataset()
    issuer.UniversalEntityID = "urn:oid:1.2.3.4.5.6.7"
    ds.IssuerOfPatientIDQualifiersSequence = Sequence([issuer])
    ds.add_new(0x00290010, "LO", "ACME UID")
    ds.add_new(0x00291001, "UI", STUDY_UID)
    ds.ImageComments = f"for {PID}"
    ds.add_new(0x00189999, "UN", b"Doe^Jane")  # a standard tag read without its VR
    deidentify(ds, names, Deidentify(retain_dates=True, private_tags=["ACME UID:0029,01"]))
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert "RetrieveURL" not in ds and "ImageComments" not in ds and 0x00189999 not in ds
    assert ds.EvaluatorName == "ANONYMIZED"
    assert ds.CalibrationDate != "20260411"  # not listed: shifted like the others
    assert "urn:oid:1.2.3.4.5.6.7" not in "\n".join(every_value(ds))
    assert ds[0x00291001].value == names.uid(STUDY_UID)
    assert ds.PatientBirthDate in ("", None)  # never kept, even with retain_dates
    assert ds.preamble is None


def test_a_result_claiming_an_instance_as_its_study_or_a_foreign_series_is_refused() -> None:
    ds, names = identified(), Pseudonyms()
    deidentify(ds, names, Deidentify())
    seg = derived(ds)
    seg.StudyInstanceUID = ds.SOPInstanceUID  # a pseudonym, but not the study's
    with pytest.raises(Refused, match="StudyInstanceUID"):
        reidentify(copy.deepcopy(seg), names, own_uids(seg))
    seg = derived(ds)
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = "2.25.999"
    with pytest.raises(Refused, match="ReferencedSeriesSequence > SeriesInstanceUID"):
        reidentify(seg, names, own_uids(seg))


def test_the_models_own_dates_stay_and_a_name_keeps_its_characters() -> None:
    ds, names = identified(), Pseudonyms()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen=山田^太郎"
    deidentify(ds, names, Deidentify(retain_dates=True))
    seg = derived(ds)
    seg.ContentDate = "20261203"  # today, the model's own
    reidentify(seg, names, own_uids(seg))
    assert seg.ContentDate == "20261203" and seg.StudyDate == "20260411"
    assert str(seg.PatientName) == "Müller^Jürgen=山田^太郎"
    assert seg.SpecificCharacterSet == "ISO_IR 192"


def test_impossible_dates_become_the_dummy() -> None:
    assert shift("00010101", "DA", -400) == "19000101"
    assert shift("99991231", "DA", 400) == "19000101"


def test_a_models_own_uids_inside_sequences_are_not_references() -> None:
    ds, names = identified(), Pseudonyms()
    deidentify(ds, names, Deidentify())
    seg = derived(ds)
    dimension = Dataset()
    dimension.DimensionOrganizationUID = "2.25.4242"  # the model's own, as highdicom makes
    seg.DimensionOrganizationSequence = Sequence([dimension])
    reidentify(seg, names, own_uids(seg))
    assert seg.DimensionOrganizationSequence[0].DimensionOrganizationUID == "2.25.4242"
