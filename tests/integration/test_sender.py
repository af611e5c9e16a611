"""The sender against real destinations: dcmtk's storescp and pynetdicom SCPs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.presentation import build_context

from isdr.dicom.files import describe
from isdr.domain.destination import Destination
from isdr.scu.sender import FileToSend, Report, SendOptions, send_files
from isdr.synthetic import SeriesSpec, write_series
from tests.helpers import dead_port
from tests.peers import RecordingSCP, Storescp

OPTIONS = SendOptions("ISDR_TEST", timeout=1.0)


def files_of(folder: Path) -> list[FileToSend]:
    found = []
    for path in sorted(folder.rglob("*.dcm")):
        info = describe(folder, path)
        found.append(
            FileToSend(
                info.name, path, info.sop_class_uid, info.sop_instance_uid, info.transfer_syntax_uid
            )
        )
    return found


@pytest.fixture
def ct(tmp_path: Path) -> list[FileToSend]:
    write_series(tmp_path / "ct", SeriesSpec(count=5))
    return files_of(tmp_path / "ct")


@pytest.fixture
def recorder() -> Iterator[RecordingSCP]:
    scp = RecordingSCP().start()
    yield scp
    scp.stop()


def send(peer: Destination, files: list[FileToSend]) -> tuple[list[str], Report]:
    confirmed: list[str] = []
    report = send_files(
        peer, files, OPTIONS, lambda item, _status: confirmed.append(item.name), threading.Event()
    )
    return confirmed, report


@pytest.mark.usefixtures("dcmtk")
def test_every_file_reaches_storescp_with_its_data_set_unchanged(
    tmp_path: Path, ct: list[FileToSend]
) -> None:
    destination = Storescp(tmp_path / "dest").start()
    try:
        confirmed, report = send(Destination.at("127.0.0.1", destination.port, "DEST"), ct)
    finally:
        destination.stop()
    assert report.complete and sorted(confirmed) == sorted(f.name for f in ct)
    sent = {dcmread(f.path).SOPInstanceUID: dcmread(f.path).PixelData for f in ct}
    got = {ds.SOPInstanceUID: ds.PixelData for ds in map(dcmread, destination.files())}
    assert got == sent


def test_a_send_without_an_answer_is_sent_again_on_a_new_association(
    recorder: RecordingSCP, ct: list[FileToSend]
) -> None:
    recorder.answers.append("silent")
    confirmed, report = send(Destination.at("127.0.0.1", recorder.port, recorder.ae_title), ct)
    assert report.complete
    assert sorted(confirmed) == sorted(f.name for f in ct)
    assert sorted(set(recorder.received)) == sorted(dcmread(f.path).SOPInstanceUID for f in ct)


def test_an_abort_instead_of_a_response_is_sent_again_on_a_new_association(
    recorder: RecordingSCP, ct: list[FileToSend]
) -> None:
    recorder.answers.extend([0, "abort"])
    confirmed, report = send(Destination.at("127.0.0.1", recorder.port, recorder.ae_title), ct)
    assert report.complete and sorted(confirmed) == sorted(f.name for f in ct)
    assert len(recorder.received) == len(ct)  # the aborted one was not recorded, then resent


def test_a_refused_file_is_reported_and_the_others_are_confirmed(
    recorder: RecordingSCP, ct: list[FileToSend]
) -> None:
    recorder.answers.extend([0, 0xA700])
    confirmed, report = send(Destination.at("127.0.0.1", recorder.port, recorder.ae_title), ct)
    assert len(confirmed) == 4
    assert list(report.refused.values()) == ["refused with status 0xA700"]


def test_a_sop_class_the_destination_does_not_take_is_refused_for_those_files(
    tmp_path: Path, ct: list[FileToSend]
) -> None:
    write_series(tmp_path / "mr", SeriesSpec(modality="MR", count=2))
    scp = RecordingSCP(contexts=[build_context(CTImageStorage, ExplicitVRLittleEndian)]).start()
    try:
        confirmed, report = send(
            Destination.at("127.0.0.1", scp.port, scp.ae_title), ct + files_of(tmp_path / "mr")
        )
    finally:
        scp.stop()
    assert sorted(confirmed) == sorted(f.name for f in ct)
    assert len(report.refused) == 2


def test_a_destination_that_is_down_ends_the_session_with_the_reason(
    ct: list[FileToSend],
) -> None:
    with dead_port() as port:
        confirmed, report = send(Destination.at("127.0.0.1", port, "NOBODY"), ct)
    assert confirmed == [] and "cannot connect" in report.error


def test_a_wrong_ae_title_is_reported_as_a_rejected_association(
    recorder: RecordingSCP, ct: list[FileToSend]
) -> None:
    confirmed, report = send(Destination.at("127.0.0.1", recorder.port, "WRONG"), ct)
    assert confirmed == [] and "rejected" in report.error


@pytest.mark.usefixtures("dcmtk")
def test_files_shared_over_two_associations_all_arrive_once(tmp_path: Path) -> None:
    write_series(tmp_path / "big", SeriesSpec(count=45))
    files = files_of(tmp_path / "big")
    destination = Storescp(tmp_path / "dest").start()
    confirmed: list[str] = []
    try:
        report = send_files(
            Destination.at("127.0.0.1", destination.port, "DEST"),
            files,
            SendOptions("ISDR_TEST", timeout=5.0, associations=2),
            lambda item, _status: confirmed.append(item.name),
            threading.Event(),
        )
    finally:
        destination.stop()
    assert report.complete and report.confirmed == 45
    assert sorted(confirmed) == sorted(f.name for f in files)
    assert len(destination.files()) == 45


@pytest.mark.parametrize("warning", [0x0001, 0x0107, 0x0116, 0xB000, 0xB007, 0xBFFF])
def test_a_warning_status_confirms_the_file_once_with_that_status(
    recorder: RecordingSCP, ct: list[FileToSend], warning: int
) -> None:
    recorder.answers.extend([warning] * len(ct))
    statuses: list[int] = []
    report = send_files(
        Destination.at("127.0.0.1", recorder.port, recorder.ae_title),
        ct,
        OPTIONS,
        lambda _item, status: statuses.append(status),
        threading.Event(),
    )
    assert report.complete and statuses == [warning] * len(ct)
    assert len(recorder.received) == len(ct)  # each sent once
