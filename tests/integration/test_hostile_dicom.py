"""Hostile input to the Store SCP: each case is refused, logged once, and harms nothing.

The hostile peer speaks raw DICOM Upper Layer over a socket, so that it can send what
no library would: data sets cut short or in the wrong encoding, oversized PDUs, silence
and A-ABORTs in the middle of an instance. After (or during) each case a good series
from another association must still be stored and recorded, and nothing of the bad
case may be left recorded or half-written.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from isdr.app import Relay, build_relay
from isdr.db.series import list_series
from isdr.errors import InstanceRejected
from isdr.scp.wellformed import check_received
from isdr.synthetic import SeriesSpec, make_instance, write_series
from tests.helpers import relay_settings, stored_files

pytestmark = pytest.mark.usefixtures("dcmtk")  # storescu sends the good series
PATIENT_ID = "HOSTILE-PID-4711"
PATIENT_NAME = "Secret^Patient"
HOSTILE = "HOSTILE"
CANNOT_UNDERSTAND = 0xC210
MISSING_UIDS = 0xC212
DOES_NOT_MATCH = 0xA900
MAX_PDU = 131072  # MAX_PDU_SIZE's default, what the relay negotiates
RECEIVING_LOGGERS = ("isdr.scp", "isdr.db", "isdr.logs", "pydicom")

# --- a raw DICOM Upper Layer peer -------------------------------------------------


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxI", kind, len(body)) + body


def associate_rq(called: str, contexts: list[tuple[int, str, str]]) -> bytes:
    """An A-ASSOCIATE-RQ proposing (context id, abstract syntax, transfer syntax)s."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract, syntax in contexts:
        sub = _item(0x30, abstract.encode()) + _item(0x40, syntax.encode())
        items += _item(0x20, struct.pack(">Bxxx", context_id) + sub)
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433")
    items += _item(0x50, user)
    fixed = struct.pack(">HH16s16s32x", 1, 0, called.ljust(16).encode(), HOSTILE.ljust(16).encode())
    return _pdu(0x01, fixed + items)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """One PDV item; control: 1 = command, 2 = last fragment."""
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data(*items: bytes) -> bytes:
    return _pdu(0x04, b"".join(items))


A_RELEASE_RQ = _pdu(0x05, b"\x00" * 4)
A_ABORT = _pdu(0x07, b"\x00\x00\x00\x00")  # source 0: the service user


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    body = b"".join(
        (
            _element(0x0002, _uid(sop_class)),
            _element(0x0100, struct.pack("<H", 0x0001)),
            _element(0x0110, struct.pack("<H", message_id)),
            _element(0x0700, struct.pack("<H", 0)),
            _element(0x0800, struct.pack("<H", 0x0001)),
            _element(0x1000, _uid(sop_instance)),
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def command_fields(command: bytes) -> dict[int, bytes]:
    fields, position = {}, 0
    while position + 8 <= len(command):
        _, element, length = struct.unpack_from("<HHI", command, position)
        fields[element] = command[position + 8 : position + 8 + length]
        position += 8 + length
    return fields


@dataclass(frozen=True)
class Answer:
    status: int
    comment: str


class RawPeer:
    """A requestor on a bare socket: it sends exactly the bytes it is given."""

    def __init__(self, port: int, called: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.called = called
        self.results: dict[int, int] = {}

    def associate(self, contexts: list[tuple[int, str, str]]) -> RawPeer:
        self.sock.sendall(associate_rq(self.called, contexts))
        kind, body = self.read_pdu()
        assert kind == 0x02, f"association not accepted (PDU type 0x{kind:02X})"
        position = 68  # protocol version, reserved, two AE titles, 32 reserved bytes
        while position < len(body):
            item, length = struct.unpack_from(">BxH", body, position)
            if item == 0x21:
                self.results[body[position + 4]] = body[position + 6]
            position += 4 + length
        return self

    def read_pdu(self) -> tuple[int, bytes]:
        kind, length = struct.unpack(">BxI", self._exactly(6))
        return kind, self._exactly(length)

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} of {count} bytes")
            data += chunk
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def store(self, dataset: bytes, *, sop_class: str, sop_instance: str) -> Answer:
        """A C-STORE of raw data set bytes on context 1, in fragments of 16 kB."""
        self.send(p_data(pdv(1, 0x03, c_store_rq(sop_class, sop_instance))))
        chunks = [dataset[i : i + 16000] for i in range(0, len(dataset), 16000)] or [b""]
        for index, chunk in enumerate(chunks):
            self.send(p_data(pdv(1, 0x02 if index == len(chunks) - 1 else 0x00, chunk)))
        return self.answer()

    def answer(self) -> Answer:
        command = b""
        while True:
            kind, body = self.read_pdu()
            assert kind == 0x04, f"expected a P-DATA-TF, got PDU type 0x{kind:02X}"
            command += body[6:]
            if body[5] & 0x02:
                break
        fields = command_fields(command)
        comment = fields.get(0x0902, b"").decode("ascii", "replace").strip(" \x00")
        return Answer(int.from_bytes(fields[0x0900], "little"), comment)

    def release(self) -> None:
        self.send(A_RELEASE_RQ)
        kind, _ = self.read_pdu()
        assert kind == 0x06, f"expected an A-RELEASE-RP, got 0x{kind:02X}"
        self.close()

    def close(self) -> None:
        self.sock.close()


# --- data sets ---------------------------------------------------------------------


def instance(**changes: str) -> Dataset:
    """A CT instance of the hostile peer's patient; a change to "" removes the tag."""
    spec = SeriesSpec(patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    ds = make_instance(spec, 0, generate_uid(), generate_uid())
    for keyword, value in changes.items():
        if value:
            setattr(ds, keyword, value)
        else:
            delattr(ds, keyword)
    return ds


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    write_dataset(fp, ds)
    return fp.getvalue()


# --- the relay, its log, and what must hold after every case -----------------------


def _started(tmp_path: Path, caplog: pytest.LogCaptureFixture, **settings: Any) -> Iterator[Relay]:
    caplog.set_level(logging.DEBUG)
    running = build_relay(relay_settings(tmp_path, WATCH_INCOMING=False, **settings))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def relay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Relay]:
    yield from _started(tmp_path, caplog)


def hostile(relay: Relay, syntax: str = ExplicitVRLittleEndian) -> RawPeer:
    peer = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE)
    return peer.associate([(1, CTImageStorage, syntax)])


def store(relay: Relay, ds: Dataset, data: bytes, syntax: str = ExplicitVRLittleEndian) -> Answer:
    """Send `data` as `ds` on a context of `syntax`, and release."""
    peer = hostile(relay, syntax)
    answer = peer.store(data, sop_class=ds.SOPClassUID, sop_instance=ds.SOPInstanceUID)
    peer.release()
    return answer


def relay_lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    """The receiving side's lines (and pydicom's, which reach the same log) at `level` or up."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= level and record.name.startswith(RECEIVING_LOGGERS)
    ]


def wait_for_line(caplog: pytest.LogCaptureFixture, *fragments: str, seconds: float = 10) -> None:
    """Until the relay logs a line holding every one of `fragments`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in relay_lines(caplog, logging.INFO):
            if all(fragment in line for fragment in fragments):
                return
        time.sleep(0.02)
    raise AssertionError(f"no log line with {fragments} in {relay_lines(caplog, logging.INFO)}")


def logged_once(caplog: pytest.LogCaptureFixture, *fragments: str) -> str:
    """The case's one warning, once its association has closed; no patient data above DEBUG."""
    closing = "ended abnormally" if "ended abnormally" in fragments else " closed: "
    wait_for_line(caplog, f"association from {HOSTILE} at", closing)
    warnings = relay_lines(caplog)
    assert len(warnings) == 1, warnings
    for fragment in fragments:
        assert fragment in warnings[0], (fragment, warnings[0])
    for record in caplog.records:
        if record.levelno > logging.DEBUG and record.name.startswith(("isdr", "pydicom")):
            assert PATIENT_ID not in record.getMessage(), record.getMessage()
            assert "Secret" not in record.getMessage(), record.getMessage()
    return warnings[0]


def good_series_is_stored(relay: Relay, count: int = 3) -> None:
    """dcmtk's storescu sends a good series on its own association; all of it is recorded.

    (Not pynetdicom: its send_c_store can lose a response under load, a race of its own.)
    """
    folder = relay.settings.DATA_DIR.parent / f"good-{generate_uid()}"
    paths = write_series(folder, SeriesSpec(modality="MR", count=count, patient_id="GOOD-1"))
    command = ["storescu", "-aet", "GOOD", "-aec", relay.settings.SCP_AE_TITLE, "127.0.0.1"]
    result = subprocess.run(
        [*command, str(relay.scp.port), *map(str, paths)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    series = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    counts = {s.series_instance_uid: s.instance_count for s in list_series(relay.engine)}
    assert counts.get(series) == count, counts


def nothing_of_the_bad_case_is_left(relay: Relay, good: int = 3) -> None:
    rows = list_series(relay.engine)
    assert [s.instance_count for s in rows] == [good], "only the good series is recorded"
    assert len(stored_files(relay.settings.INCOMING_DIR)) == good
    assert not [p for p in relay.settings.INCOMING_DIR.rglob(".*")], "a temporary is left"
    staging = relay.writer.staging
    assert staging is None or list(staging.iterdir()) == [], "a half-written file is left"


# --- 1-5: the data set ---------------------------------------------------------------


def with_sequences(ds: Dataset) -> Dataset:
    """Undefined lengths everywhere they may be: nested sequences, an empty item."""
    code = Dataset()
    code.CodeValue = "121311"
    reference = Dataset()
    reference.ReferencedSOPInstanceUID = generate_uid()
    reference.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([reference, Dataset(), reference])
    for element in (ds["ReferencedImageSequence"], reference["PurposeOfReferenceCodeSequence"]):
        element.is_undefined_length = True
        for item in element.value:
            item.is_undefined_length_sequence_item = True
    return ds


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_the_check_passes_sequences_of_undefined_length(syntax: str) -> None:
    check_received(encode(with_sequences(instance()), syntax), syntax)


def test_the_check_passes_encapsulated_pixel_data() -> None:
    ds = with_sequences(instance())
    ds.PixelData = encapsulate([b"\x00" * 100, b"\x01" * 51])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    data = encode(ds)
    check_received(data, RLELossless)
    with pytest.raises(InstanceRejected, match="has no delimiter"):
        check_received(data[:-8], RLELossless)


ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _undefined(tag: tuple[int, int], vr: bytes, *items: bytes) -> bytes:
    """An explicit VR LE element of undefined length holding undefined-length items."""
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + i + ITEM_END for i in items)
    return struct.pack("<HH2s2xI", *tag, vr, 0xFFFFFFFF) + body + SEQUENCE_END


def test_the_check_passes_implicit_items_where_other_writers_put_them() -> None:
    implicit_element = struct.pack("<HHI", 0x0008, 0x0100, 6) + b"121311"
    head = encode(instance())
    head = head[: head.index(b"\xe0\x7f\x10\x00")]  # up to the pixel data
    private_un = _undefined((0x0009, 0x1010), b"UN", implicit_element)
    implicit_item_in_sq = _undefined((0x0040, 0xA730), b"SQ", implicit_element)
    check_received(head + private_un + implicit_item_in_sq, ExplicitVRLittleEndian)


def test_sequences_nested_beyond_any_real_data_set_are_refused() -> None:
    nested = b""
    for _ in range(40):
        nested = _undefined((0x0040, 0xA730), b"SQ", nested)
    with pytest.raises(InstanceRejected, match="nested more than"):
        check_received(nested, ExplicitVRLittleEndian)


def cut_in_a_value(ds: Dataset) -> bytes:
    return encode(ds)[:-1000]  # inside the pixel data


def cut_in_a_sort_value(ds: Dataset) -> bytes:
    data = encode(ds)
    return data[: data.index(b"\x20\x00\x0e\x00UI") + 12]  # SeriesInstanceUID, 4 bytes in


def cut_in_a_header(ds: Dataset) -> bytes:
    data = encode(ds)
    return data[: data.index(b"\xe0\x7f\x10\x00") + 6]  # PixelData's header, 6 of 12 bytes


def preamble_and_garbage(ds: Dataset) -> bytes:
    return b"\x00" * 128 + b"DICM" + random.Random(1).randbytes(4000)


def random_bytes(ds: Dataset) -> bytes:
    return random.Random(2).randbytes(6000)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (cut_in_a_value, "element (7FE0,0010) at byte"),
        (cut_in_a_sort_value, "element (0020,000E) at byte"),
        (cut_in_a_header, "cut short in an element header"),
        (preamble_and_garbage, "does not start with a data element"),
        (random_bytes, "does not start with a data element"),
    ],
)
def test_a_cut_or_garbage_data_set_is_refused_and_logged_once(
    relay: Relay, caplog: pytest.LogCaptureFixture, make: Callable[[Dataset], bytes], reason: str
) -> None:
    ds = instance()
    answer = store(relay, ds, make(ds))
    assert answer.status == CANNOT_UNDERSTAND, answer
    assert reason in answer.comment, "the sender is told why (0000,0902)"
    line = logged_once(caplog, f"refused instance {ds.SOPInstanceUID} from {HOSTILE}", reason)
    assert "0xC210" in line
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


@pytest.mark.parametrize(
    ("encoded_in", "context", "reason"),
    [
        (ImplicitVRLittleEndian, ExplicitVRLittleEndian, "in implicit VR, but its presentation"),
        (ExplicitVRLittleEndian, ImplicitVRLittleEndian, "in explicit VR, but its presentation"),
        (ExplicitVRBigEndian, ExplicitVRLittleEndian, "in big endian, but its presentation"),
        (ExplicitVRLittleEndian, ExplicitVRBigEndian, "in little endian, but its presentation"),
    ],
)
def test_a_data_set_in_another_transfer_syntax_than_its_context_is_refused(
    relay: Relay, caplog: pytest.LogCaptureFixture, encoded_in: str, context: str, reason: str
) -> None:
    ds = instance()
    answer = store(relay, ds, encode(ds, encoded_in), context)
    assert answer.status == CANNOT_UNDERSTAND, answer
    logged_once(caplog, f"refused instance {ds.SOPInstanceUID}", reason)
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


@pytest.mark.parametrize(
    ("header", "syntax"),
    [
        (struct.pack("<HH2s2xI", 0x0008, 0x0001, b"OB", 0x7FFFFFFF), ExplicitVRLittleEndian),
        (struct.pack("<HHI", 0x0008, 0x0001, 0xFFFFFFF0), ImplicitVRLittleEndian),
    ],
)
def test_an_element_claiming_two_gigabytes_is_refused_at_once_without_the_memory(
    relay: Relay, caplog: pytest.LogCaptureFixture, header: bytes, syntax: str
) -> None:
    ds = instance()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
    began = time.monotonic()
    answer = store(relay, ds, header + b"\x00" * 64 + encode(ds, syntax), syntax)
    assert time.monotonic() - began < 3
    assert answer.status == CANNOT_UNDERSTAND, answer
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024
    logged_once(caplog, "element (0008,0001) at byte 0 declares")
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"SOPInstanceUID": ""}, MISSING_UIDS, "missing SOPInstanceUID"),
        ({"StudyInstanceUID": ""}, MISSING_UIDS, "missing StudyInstanceUID"),
        ({"SOPInstanceUID": "1.2.826.0.1.99"}, DOES_NOT_MATCH, "is not the request's"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, DOES_NOT_MATCH, "SOPClassUID"),
    ],
)
def test_a_data_set_without_its_uids_or_not_the_one_announced_is_refused(
    relay: Relay,
    caplog: pytest.LogCaptureFixture,
    changes: dict[str, str],
    status: int,
    reason: str,
) -> None:
    announced = generate_uid()
    data = encode(instance(**{"SOPInstanceUID": announced, **changes}))
    peer = hostile(relay)
    answer = peer.store(data, sop_class=CTImageStorage, sop_instance=announced)
    peer.release()
    assert answer.status == status, answer
    logged_once(caplog, f"refused instance {announced}", reason)
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


def test_a_missing_patient_id_is_stored_under_a_placeholder_as_documented(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    ds = instance(PatientID="")
    assert store(relay, ds, encode(ds)).status == 0
    [stored] = stored_files(relay.settings.INCOMING_DIR)
    assert stored.relative_to(relay.settings.INCOMING_DIR).parts[0] == "NO_PATIENT_ID"
    [series] = list_series(relay.engine)
    assert (series.patient_id, series.instance_count) == ("", 1)
    wait_for_line(caplog, f"association from {HOSTILE} at", " closed: 1 stored")
    assert relay_lines(caplog) == []


# --- 6-9: the association ------------------------------------------------------------


def test_an_unknown_sop_class_gets_no_context_and_one_log_line(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    peer = RawPeer(relay.scp.port, relay.settings.SCP_AE_TITLE)
    peer.associate([(1, "1.2.3.4.5.6.7", ExplicitVRLittleEndian)])
    assert peer.results == {1: 0x03}, "abstract syntax not supported"
    peer.release()
    line = logged_once(caplog, "1.2.3.4.5.6.7 (not supported)")
    assert f"association from {HOSTILE} at 127.0.0.1:" in line
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


def aborted(peer: RawPeer) -> tuple[int, bytes] | None:
    """The A-ABORT the relay sent, or None when the connection was only cut."""
    try:
        kind, body = peer.read_pdu()
    except (ConnectionError, OSError):
        return None
    return kind, body


@pytest.mark.parametrize("announced", [MAX_PDU + 1, 0x7FFFFFF0])
def test_a_pdu_over_the_negotiated_maximum_is_aborted_with_one_log_line(
    relay: Relay, caplog: pytest.LogCaptureFixture, announced: int
) -> None:
    ds = instance()
    peer = hostile(relay)
    peer.send(p_data(pdv(1, 0x03, c_store_rq(CTImageStorage, ds.SOPInstanceUID))))
    body = struct.pack(">IBB", announced - 4, 1, 0x02) + encode(ds)  # one PDV, all of it
    began = time.monotonic()
    peer.send(struct.pack(">BxI", 0x04, announced) + body.ljust(MAX_PDU + 1000, b"\x00"))
    assert aborted(peer) == (0x07, b"\x00\x00\x02\x06"), "A-ABORT: provider, invalid parameter"
    assert time.monotonic() - began < 3
    peer.close()
    logged_once(caplog, "ended abnormally", f"P-DATA-TF PDU of {announced} bytes, over the 131072")
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


def test_a_pdv_item_claiming_more_than_its_pdu_is_aborted(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    peer = hostile(relay)
    peer.send(_pdu(0x04, struct.pack(">IBB", 0x7FFFFFFF, 1, 0x03) + b"\x00" * 100))
    assert aborted(peer) == (0x07, b"\x00\x00\x02\x06")
    peer.close()
    logged_once(caplog, "ended abnormally", "broken PDV item declaring 2147483647 bytes")
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


@pytest.fixture
def impatient_relay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Relay]:
    """A relay that drops a silent peer after 1 s instead of 120 s."""
    yield from _started(tmp_path, caplog, SCP_NETWORK_TIMEOUT=1.0)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("in a PDU", "bytes was not whole within 1 s: dropped"),
        ("between PDUs", "the peer sent nothing for 1 s: aborted"),
    ],
)
def test_a_sender_silent_in_the_middle_of_an_instance_is_dropped_and_others_go_on(
    impatient_relay: Relay, caplog: pytest.LogCaptureFixture, where: str, reason: str
) -> None:
    relay, ds = impatient_relay, instance()
    data = encode(ds)
    peer = hostile(relay)
    peer.send(p_data(pdv(1, 0x03, c_store_rq(CTImageStorage, ds.SOPInstanceUID))))
    peer.send(p_data(pdv(1, 0x00, data[:4000])))
    if where == "in a PDU":
        peer.send(p_data(pdv(1, 0x02, data[4000:]))[:2000])
    with ThreadPoolExecutor(1) as pool:  # meanwhile, another sender
        pool.submit(good_series_is_stored, relay).result(timeout=30)
    logged_once(caplog, "ended abnormally", reason, "an instance in transit")
    peer.close()
    nothing_of_the_bad_case_is_left(relay)


def test_an_a_abort_in_the_middle_of_a_multi_fragment_instance_leaves_nothing(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    ds = instance()
    data = encode(ds)
    peer = hostile(relay)
    peer.send(p_data(pdv(1, 0x03, c_store_rq(CTImageStorage, ds.SOPInstanceUID))))
    for start in (0, 4000, 8000):
        peer.send(p_data(pdv(1, 0x00, data[start : start + 4000])))
    peer.send(A_ABORT)
    peer.close()
    line = logged_once(caplog, "ended abnormally", "aborted by the peer (A-ABORT)")
    assert "an instance in transit" in line
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


def test_hostile_associations_in_parallel_leave_a_good_sender_untouched(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    def garbage() -> int:
        ds = instance()
        return store(relay, ds, os.urandom(3000)).status

    with ThreadPoolExecutor(4) as pool:
        bad = [pool.submit(garbage) for _ in range(3)]
        good = pool.submit(good_series_is_stored, relay, 10)
        good.result(timeout=60)
        assert [f.result(timeout=60) for f in bad] == [CANNOT_UNDERSTAND] * 3
    nothing_of_the_bad_case_is_left(relay, good=10)


# --- 13: deflated data sets ---------------------------------------------------------

DEFLATED = DeflatedExplicitVRLittleEndian


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def deflate_bomb(ds: Dataset, gigabytes: int) -> bytes:
    """A data set whose pixel data is `gigabytes` GiB of zeros, deflated 1000:1.

    After a full flush a deflater starts afresh, so each MiB of zeros deflates to the same
    bytes: the stream is made by repeating them, without deflating a GiB.
    """
    head = encode(ds)
    head = head[: head.index(b"\xe0\x7f\x10\x00")]  # up to the pixel data
    head += struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", gigabytes * 2**30)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    zeros = packer.compress(bytes(2**20)) + packer.flush(zlib.Z_FULL_FLUSH)
    return start + zeros * (gigabytes * 1024) + packer.flush()


def test_a_whole_deflated_data_set_with_sequences_passes_the_check() -> None:
    check_received(deflate(encode(with_sequences(instance()))), DEFLATED)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda ds: deflate(cut_in_a_value(ds)), "element (7FE0,0010) at byte"),
        (lambda ds: deflate(cut_in_a_header(ds)), "cut short in an element header"),
        (lambda ds: deflate(encode(ds, ImplicitVRLittleEndian)), "in implicit VR, but its"),
        (lambda ds: deflate(encode(ds))[:-300], "its deflate stream does not end"),
        (lambda ds: encode(ds), "does not inflate"),
        (lambda ds: random.Random(3).randbytes(6000), "does not inflate"),
    ],
    ids=["cut-in-a-value", "cut-in-a-header", "implicit-inside", "stream-cut", "plain", "random"],
)
def test_a_deflated_data_set_that_is_broken_inside_or_not_deflated_is_refused_with_why(
    relay: Relay, caplog: pytest.LogCaptureFixture, make: Callable[[Dataset], bytes], reason: str
) -> None:
    ds = instance()
    answer = store(relay, ds, make(ds), DEFLATED)
    assert answer.status == CANNOT_UNDERSTAND, answer
    line = logged_once(caplog, f"refused instance {ds.SOPInstanceUID}", reason)
    assert answer.comment and answer.comment in line, "the sender is told why (0000,0902)"
    assert "0xC210" in line and "Traceback" not in caplog.text
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)


def test_a_deflate_bomb_is_refused_without_inflating_it_into_memory(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    ds = instance()
    bomb = deflate_bomb(ds, 2)  # 2 GiB in 2 MB: whole and well-formed once inflated
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
    answer = store(relay, ds, bomb, DEFLATED)
    assert answer.status == CANNOT_UNDERSTAND, answer
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 512 * 1024, f"grew by {grown} kB, not by at most 128 MiB (64 times 2 MB)"
    logged_once(caplog, f"refused instance {ds.SOPInstanceUID}", "inflates to more than")
    good_series_is_stored(relay)
    nothing_of_the_bad_case_is_left(relay)
