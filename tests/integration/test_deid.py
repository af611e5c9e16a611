"""De-identification on the way out, re-identification on the way back: a real relay, the
stand-in InferenceServer as a model that reads its input (a derived series, a SEG and an
RT Structure Set that reference it), and a destination that keeps what it gets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from isdr.app import Relay, build_relay
from isdr.db.deid import load
from isdr.db.jobs import list_jobs
from isdr.demo.derived import archive_datasets
from isdr.demo.standin import StandIn
from isdr.synthetic import SeriesSpec, make_instance
from tests.helpers import relay_settings, send_datasets
from tests.peers import RecordingSCP

STUDY, SERIES = "1.2.826.0.1.3680043.10.91", "1.2.826.0.1.3680043.10.91.1"
FRAME = "1.2.826.0.1.3680043.10.91.9"
NAME, PID, ACCESSION = "Doe^Jane^Q", "PID-7731-XYZ", "ACC-99812"
SECRETS = (NAME, "Doe^", PID, ACCESSION, "Saint Example Hospital", "House^Gregory",
           "Tech^Tina", "19710203", "20260411", "Lung screening Jane", "Main Street 1",
           "private secret", "SN-44120", STUDY, SERIES, FRAME, "STUDY-77",
           "PYNET")  # fmt: skip  # fmt: skip


def identified(number: int) -> Dataset:
    """A CT instance whose header names the patient everywhere the profile looks."""
    ds = make_instance(SeriesSpec(modality="CT", count=3), number, STUDY, SERIES)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, "19710203"
    ds.FrameOfReferenceUID = FRAME
    ds.PatientSex, ds.PatientWeight, ds.PatientAddress = "F", "61.5", "Main Street 1"
    ds.AccessionNumber, ds.StudyID = ACCESSION, "STUDY-77"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260411"
    ds.StudyDescription = "Lung screening Jane"
    ds.InstitutionName, ds.InstitutionAddress = "Saint Example Hospital", "Main Street 1"
    ds.ReferringPhysicianName, ds.PerformingPhysicianName = "House^Gregory", "House^Gregory"
    ds.OperatorsName, ds.DeviceSerialNumber = "Tech^Tina", "SN-44120"
    request = Dataset()
    request.AccessionNumber, request.RequestingPhysician = ACCESSION, "House^Gregory"
    ds.RequestAttributesSequence = Sequence([request])
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091011, "LO", "private secret")
    return ds


def values(ds: Dataset) -> Iterator[str]:
    for element in [*getattr(ds, "file_meta", []), *ds]:
        if element.VR == "SQ":
            for item in element.value:
                yield from values(item)
        elif element.tag != 0x7FE00010:
            yield str(element.value)


def uids(ds: Dataset, keyword: str) -> Iterator[str]:
    """Every value of that keyword, at every depth."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from uids(item, keyword)
        elif element.keyword == keyword:
            yield str(element.value)


@pytest.fixture
def destination() -> Iterator[RecordingSCP]:
    scp = RecordingSCP("PACS")
    scp.keep = True
    scp.start()
    yield scp
    scp.stop()


def start(tmp_path: Path, standin: StandIn, destination: RecordingSCP, **more: Any) -> Relay:
    relay = build_relay(relay_settings(
        tmp_path, CERT_FILE=standin.ca_file, POST_AFTER=1, POST_INTERVAL=0.2,
        GET_INTERVAL=0.2, DELIVERY_RETRY_DELAY=0.2,
    ))  # fmt: skip
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ct.json").write_text(json.dumps({
        "modality_regex": "CT", "inference_server_url": standin.url_v2,
        "inference_server_api": 2, "model_human_readable_id": "ct-model",
        "deidentify": {"retain_patient_characteristics": True} | more,
        "scus": [{"scu_ip": "127.0.0.1", "scu_port": destination.port, "scu_ae_title": "PACS"}],
    }))  # fmt: skip
    relay.start()
    return relay


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_nothing_identifying_leaves_and_the_result_comes_back_on_the_right_scan(
    tmp_path: Path, standin: StandIn, destination: RecordingSCP
) -> None:
    standin.derive_from_input = True
    relay = start(tmp_path, standin, destination)
    try:
        sent = [identified(n) for n in range(3)]
        assert send_datasets(relay.scp.port, sent) == [0, 0, 0]
        wait_for(lambda: [j.state for j in list_jobs(relay.engine)] == ["delivered"])
    finally:
        relay.stop()
    [submission] = standin.submissions
    received = archive_datasets(submission.data)
    assert len(received) == 3
    text = "\n".join(value for ds in received for value in values(ds))
    assert [secret for secret in SECRETS if secret in text] == []
    assert {ds.PatientSex for ds in received} == {"F"}  # the option kept it
    # back at the destination: 3 derived, a SEG and an RT Structure Set, re-identified
    assert len(destination.datasets) == 5
    originals = {str(ds.SOPInstanceUID) for ds in sent}
    for ds in destination.datasets:
        assert (str(ds.PatientName), ds.PatientID, ds.AccessionNumber) == (NAME, PID, ACCESSION)
        assert ds.StudyInstanceUID == STUDY
        assert ds.FrameOfReferenceUID == sent[0].FrameOfReferenceUID
        assert "PatientIdentityRemoved" not in ds
        references = set(uids(ds, "ReferencedSOPInstanceUID")) - {STUDY}
        assert references and references <= originals, ds.SOPClassUID
    rtstruct = next(ds for ds in destination.datasets if ds.Modality == "RTSTRUCT")
    assert set(uids(rtstruct, "ReferencedFrameOfReferenceUID")) == {sent[0].FrameOfReferenceUID}
    frames = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert set(uids(frames, "SeriesInstanceUID")) == {SERIES}


def test_a_result_that_is_not_the_jobs_patient_is_not_delivered(
    tmp_path: Path, standin: StandIn, destination: RecordingSCP
) -> None:
    standin.derive_from_input = False  # the toy model: a new patient and study of its own
    relay = start(tmp_path, standin, destination)
    try:
        assert send_datasets(relay.scp.port, [identified(n) for n in range(3)]) == [0, 0, 0]
        wait_for(lambda: [j.state for j in list_jobs(relay.engine)] == ["failed"])
        [job] = list_jobs(relay.engine)
        assert "not delivered, not the job's" in job.last_error
        assert "PatientID is not the pseudonym the job sent" in job.last_error
        assert PID not in job.last_error
    finally:
        relay.stop()
    assert destination.received == []


def test_the_pseudonyms_survive_a_restart_and_the_result_is_re_identified(
    tmp_path: Path, standin: StandIn, destination: RecordingSCP
) -> None:
    standin.derive_from_input = True
    standin.polls_before_ready = 10**6
    relay = start(tmp_path, standin, destination)
    try:
        assert send_datasets(relay.scp.port, [identified(n) for n in range(3)]) == [0, 0, 0]
        wait_for(lambda: [j.state for j in list_jobs(relay.engine)] == ["submitted"])
        [job] = list_jobs(relay.engine)
        assert load(relay.engine, job.id) is not None
    finally:
        relay.stop()
    standin.polls_before_ready = 1
    again = build_relay(relay.settings)
    again.start()
    try:
        wait_for(lambda: [j.state for j in list_jobs(again.engine)] == ["delivered"])
    finally:
        again.stop()
    assert len(destination.datasets) == 5
    assert {ds.PatientID for ds in destination.datasets} == {PID}


def test_instances_whose_pixels_may_show_identity_are_left_out_and_said(
    tmp_path: Path, standin: StandIn, destination: RecordingSCP
) -> None:
    relay = start(tmp_path, standin, destination)
    try:
        burned = [identified(n) for n in range(3)]
        for ds in burned:
            ds.BurnedInAnnotation = "YES"
        assert send_datasets(relay.scp.port, burned) == [0, 0, 0]
        wait_for(lambda: [j.state for j in list_jobs(relay.engine)] == ["failed"])
        [job] = list_jobs(relay.engine)
        assert job.last_error.startswith("de-identification left out every instance: ")
        assert "instance 1 of 3: BurnedInAnnotation is YES" in job.last_error
    finally:
        relay.stop()
    assert standin.submissions == []


def test_an_output_whose_pseudonyms_are_gone_is_never_delivered(
    tmp_path: Path, standin: StandIn, destination: RecordingSCP
) -> None:
    from isdr.db.deid import forget

    standin.derive_from_input = True
    standin.polls_before_ready = 10**6
    relay = start(tmp_path, standin, destination)
    try:
        assert send_datasets(relay.scp.port, [identified(n) for n in range(3)]) == [0, 0, 0]
        wait_for(lambda: [j.state for j in list_jobs(relay.engine)] == ["submitted"])
        [job] = list_jobs(relay.engine)
        forget(relay.engine, job.id)  # as if removed with its files, then retried
        standin.polls_before_ready = 1
        wait_for(lambda: [j.state for j in list_jobs(relay.engine)] == ["failed"])
        [job] = list_jobs(relay.engine)
        assert "its pseudonyms are gone" in job.last_error
    finally:
        relay.stop()
    assert destination.received == []
