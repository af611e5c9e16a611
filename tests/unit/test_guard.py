"""The wire guard under pynetdicom's reads: messages bounded, requests checked, time kept."""

from __future__ import annotations

import struct
import time

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from isdr.scp.guard import PduGuard, WireLimits, association_request_problem
from tests.integration.test_hostile_dicom import associate_rq, p_data, pdv

LIMIT = 100_000


class Wire:
    """Bytes a peer sent, read as pynetdicom reads them: a header, then a body."""

    def __init__(self, *pdus: bytes, deadline_passes: bool = False) -> None:
        self.data = b"".join(pdus)
        self.sent: list[bytes] = []
        self.deadlines: list[float] = []
        self.deadline_passes = deadline_passes

    def read(self, count: int, deadline: float) -> bytes:
        self.deadlines.append(deadline)
        if self.deadline_passes:
            raise TimeoutError
        chunk, self.data = self.data[:count], self.data[count:]
        return chunk


def guard_on(wire: Wire, woken: list[object] | None = None) -> PduGuard:
    limits = WireLimits(0, associate_timeout=5.0, pdu_timeout=60.0, max_data_set=lambda: LIMIT)
    wake = None if woken is None else (lambda: woken.append(None))
    return PduGuard(wire.read, wire.sent.append, limits, wake)


def read_pdus(guard: PduGuard, count: int) -> list[bytes]:
    """What pynetdicom would get for `count` PDUs ('' once the guard has refused)."""
    out = []
    for _ in range(count):
        header = guard(6)
        if len(header) < 6:
            out.append(b"")
            continue
        (length,) = struct.unpack(">2xI", header)
        out.append(bytes(guard(length)))
    return out


def test_fragments_of_a_data_set_past_its_limit_are_aborted() -> None:
    fragment = pdv(1, 0x00, b"x" * 40_000)  # never the last
    wire = Wire(*(p_data(fragment) for _ in range(4)))
    guard = guard_on(wire)
    read = read_pdus(guard, 4)
    assert read[2] == b"" and read[3] == b""
    assert guard.problem is not None and "data set of more than 100000 bytes" in guard.problem
    assert wire.sent and wire.sent[0][0] == 0x07  # an A-ABORT


def test_the_last_fragment_of_a_data_set_starts_the_count_again() -> None:
    whole = p_data(pdv(1, 0x00, b"x" * 60_000)) + p_data(pdv(1, 0x02, b"x" * 30_000))
    guard = guard_on(Wire(whole, whole, whole))
    assert all(read_pdus(guard, 6))
    assert guard.problem is None


def test_a_command_set_with_no_end_is_aborted() -> None:
    wire = Wire(*(p_data(pdv(1, 0x01, b"c" * 30_000)) for _ in range(3)))
    guard = guard_on(wire)
    read_pdus(guard, 3)
    assert guard.problem is not None and "command set of more than 65536" in guard.problem


def test_a_request_with_an_even_presentation_context_id_is_aborted_and_wakes_its_thread() -> None:
    woken: list[object] = []
    guard = guard_on(
        Wire(associate_rq("ISDR", [(2, CTImageStorage, ExplicitVRLittleEndian)])), woken
    )
    assert read_pdus(guard, 1) == [b""]
    assert guard.problem is not None and "odd integer" in guard.problem
    assert woken and not guard.associated


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda rq: rq[:80] + b"\xff" * 4 + rq[84:], id="an item length past the end"),
        pytest.param(lambda rq: rq[:74] + b"\x99" + rq[75:], id="an unknown item type"),
        pytest.param(lambda rq: rq[:6] + b"\x00\x05" + rq[8:], id="an unknown protocol version"),
        pytest.param(lambda rq: rq[:6] + rq[6:74], id="no items at all"),
    ],
)
def test_no_malformed_request_gets_past_the_check_uncaught(mangle: object) -> None:
    request = associate_rq("ISDR", [(1, CTImageStorage, ExplicitVRLittleEndian)])
    assert association_request_problem(request) is None
    mangled = mangle(request)  # type: ignore[operator]
    problem = association_request_problem(mangled)
    assert problem is None or isinstance(problem, str)


def test_two_contexts_with_one_id_are_refused() -> None:
    request = associate_rq(
        "ISDR",
        [(1, CTImageStorage, ExplicitVRLittleEndian), (1, CTImageStorage, ExplicitVRLittleEndian)],
    )
    assert association_request_problem(request) == "two presentation contexts have the same ID"


def test_before_its_request_a_connection_reads_to_the_associate_deadline() -> None:
    wire = Wire(associate_rq("ISDR", [(1, CTImageStorage, ExplicitVRLittleEndian)]))
    guard = guard_on(wire)
    began = time.monotonic()
    read_pdus(guard, 1)
    assert guard.associated
    assert all(d <= began + 5.0 + 1 for d in wire.deadlines)


def test_a_read_past_its_deadline_says_which_phase_was_late() -> None:
    woken: list[object] = []
    guard = guard_on(Wire(deadline_passes=True), woken)
    assert guard(6) == b""  # as if closed: pynetdicom closes the connection
    assert guard.problem is not None and "PDU header was not whole within" in guard.problem
    assert woken


def test_with_no_pdu_size_negotiated_a_pdu_is_still_held_to_64_mib() -> None:
    wire = Wire(struct.pack(">BxI", 0x04, 100 << 20))
    guard = guard_on(wire)  # max_pdata 0: MAX_PDU_SIZE=0
    assert guard(6) == b""
    assert guard.problem is not None and "over the 67108864" in guard.problem
