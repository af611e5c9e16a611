"""What a peer may send on the wire, and how its connection ended.

pynetdicom reads a PDU as a 6-byte header, then as many bytes as that header announces:
it does not hold a P-DATA-TF PDU to the maximum length the relay negotiated, nor any
other PDU to a sane size, nor a message to any size, nor a PDU to any time. `PduGuard`
sits under pynetdicom's reads and refuses, with an A-ABORT (pynetdicom then sees the
connection close):

- a P-DATA-TF PDU over the negotiated maximum (or another PDU over 1 MiB), from its
  header, before its bytes are read;
- an A-ASSOCIATE-RQ that pynetdicom could not take (an even presentation context ID,
  items that do not add up...), before pynetdicom's own thread meets it;
- a data set (or command set) growing past its limit, fragment by fragment;
- a connection whose A-ASSOCIATE-RQ is not whole within its time, and a PDU that is not
  whole within its own (a peer dripping a byte at a time).

The guard also notes what went wrong on the wire (a peer silent or gone in the middle
of a PDU, an A-ABORT), so that the association's one closing log line can say it.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RQ as A_ASSOCIATE_RQ_PDU
from pynetdicom.pdu_items import PresentationContextItemRQ

from isdr.domain.text import shown

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
A_ABORT = 0x07
PDU_TYPES = range(0x01, 0x08)
MAX_OTHER_PDU = 1 << 20  # an A-ASSOCIATE-RQ with every storage class is about 20 kB
UNLIMITED_PDATA = 64 << 20  # with MAX_PDU_SIZE=0: a PDU is read whole before it is counted
MAX_COMMAND_SET = 1 << 16  # a C-STORE-RQ's command set is about 200 bytes
_HEADER = struct.Struct(">BxI")
_PDV_LENGTH = struct.Struct(">I")
# Source 2 (service provider), reason 6 (invalid PDU parameter value): PS3.8 9.3.8.
ABORT_INVALID_PARAMETER = struct.pack(">BxIxxBB", A_ABORT, 4, 0x02, 0x06)
COMMAND, LAST = 0x01, 0x02  # bits of a PDV's message control header
OVER = {
    COMMAND: "where one is a few hundred",
    0: "over MAX_INSTANCE_MB or the disk's room above MIN_FREE_DISK_MB",
}

Reader = Callable[[int, float], bytes | bytearray]  # (count, deadline) -> bytes


@dataclass(frozen=True)
class WireLimits:
    """What one connection may take of the relay, in bytes and in time."""

    max_pdata: int  # the negotiated maximum P-DATA-TF PDU length; 0: no limit
    associate_timeout: float  # from the connection to its whole A-ASSOCIATE-RQ
    pdu_timeout: float  # from a PDU's first byte to its last
    max_data_set: Callable[[], int]  # asked at the first fragment of each data set


class PduGuard:
    """A `recv(n)` for pynetdicom that refuses oversized or malformed PDUs, holds each
    phase to its time, and notes trouble.

    pynetdicom calls it for a PDU's 6-byte header, then (for a known PDU type) for its
    body; the guard follows that rhythm to know which is which.
    """

    def __init__(
        self,
        read: Reader,
        send: Callable[[bytes], Any],
        limits: WireLimits,
        wake: Callable[[], object] | None = None,
    ) -> None:
        self._read = read
        self._send = send
        self.limits = limits
        self._wake = wake  # tells the association's thread, still waiting for a request
        self._associate_by = time.monotonic() + limits.associate_timeout
        self.associated = False  # its A-ASSOCIATE-RQ has been read whole
        self._pdu_by = 0.0  # when the PDU being read must be whole
        self._body: int | None = None  # the length of the body the next read is for
        self._body_type = 0
        self._header = b""
        self._refused = False
        self._message = {COMMAND: 0, 0: 0}  # bytes so far of the command / data set
        self._data_set_limit = 0
        self.problem: str | None = None  # what went wrong, for the closing log line
        self.reported = False  # the problem has been logged
        self.heard = 0  # bytes read
        self.busy = False  # a C-STORE of this connection is being stored
        self.peer_aborted = False
        self.last_data = time.monotonic()

    def __call__(self, count: int) -> bytes | bytearray:
        if self._refused:
            return b""  # as if closed: pynetdicom ends the association
        body, self._body = self._body, None
        what = "a PDU header" if body is None else f"a PDU of {body} bytes"
        if body is None:
            self._pdu_by = self._deadline()
        try:
            data = self._read(count, self._pdu_by)
        except TimeoutError:
            return self._give_up(self._late(what))
        except OSError as exc:
            return self._give_up(f"connection error in the middle of {what}: {exc.strerror or exc}")
        if data:
            self.last_data = time.monotonic()
            self.heard += len(data)
        if len(data) < count:
            if data or body is not None:
                self.problem = f"the connection closed in the middle of {what}"
            self._wake_waiting()  # no request is coming: the association's thread can go
            return data
        if body is None:
            return self._on_header(data)
        return self._on_body(data)

    def _deadline(self) -> float:
        pdu_by = time.monotonic() + self.limits.pdu_timeout
        return pdu_by if self.associated else min(pdu_by, self._associate_by)

    def _late(self, what: str) -> str:
        if not self.associated and time.monotonic() >= self._associate_by - 0.01:
            return (
                f"its A-ASSOCIATE-RQ was not whole within {self.limits.associate_timeout:g} s "
                f"(in the middle of {what}): dropped"
            )
        return f"{what} was not whole within {self.limits.pdu_timeout:g} s: dropped"

    def _on_header(self, data: bytes | bytearray) -> bytes | bytearray:
        pdu_type, length = _HEADER.unpack_from(data)
        if pdu_type not in PDU_TYPES:
            self.problem = f"sent an unknown PDU type 0x{pdu_type:02X}: aborted"
            return data  # pynetdicom answers it with an A-ABORT, and reads no body
        limit = (
            (self.limits.max_pdata or UNLIMITED_PDATA) if pdu_type == P_DATA_TF else MAX_OTHER_PDU
        )
        if limit and length > limit:
            return self._refuse(pdu_type, length, limit)
        self.peer_aborted |= pdu_type == A_ABORT
        self._body, self._body_type, self._header = length, pdu_type, bytes(data)
        return data

    def _on_body(self, body: bytes | bytearray) -> bytes | bytearray:
        if self._body_type == P_DATA_TF:
            return self._check_items(body)
        if self._body_type == A_ASSOCIATE_RQ and not self.associated:
            problem = association_request_problem(self._header + bytes(body))
            if problem is not None:
                return self._abort(f"sent an A-ASSOCIATE-RQ that cannot be taken ({problem})")
            self.associated = True
        return body

    def _check_items(self, body: bytes | bytearray) -> bytes | bytearray:
        """A P-DATA-TF body must be whole PDV items, each at least its two header bytes,
        and no message may grow past its limit."""
        position = 0
        while position < len(body):
            if len(body) - position < 4:
                return self._refuse_items(position)
            (length,) = _PDV_LENGTH.unpack_from(body, position)
            if length < 2 or length > len(body) - position - 4:
                return self._refuse_items(position, length)
            over = self._count_fragment(body[position + 5], length - 2)
            if over is not None:
                return self._abort(over)
            position += 4 + length
        return body

    def _count_fragment(self, control: int, size: int) -> str | None:
        """Add a fragment to its message; what is wrong when the message is over its limit."""
        kind = control & COMMAND
        if kind != COMMAND and self._message[kind] == 0:
            self._data_set_limit = self.limits.max_data_set()
        total = self._message[kind] + size
        self._message[kind] = 0 if control & LAST else total
        limit = MAX_COMMAND_SET if kind == COMMAND else self._data_set_limit
        if total <= limit:
            return None
        what = "command set" if kind == COMMAND else "data set"
        return f"sent a {what} of more than {limit} bytes, {OVER[kind]}"

    def _refuse_items(self, position: int, length: int | None = None) -> bytes:
        declared = "" if length is None else f" declaring {length} bytes"
        return self._abort(
            f"sent a P-DATA-TF PDU with a broken PDV item{declared} at byte {position}"
        )

    def _refuse(self, pdu_type: int, length: int, limit: int) -> bytes:
        kind = "P-DATA-TF PDU" if pdu_type == P_DATA_TF else f"PDU of type 0x{pdu_type:02X}"
        agreed = "negotiated" if pdu_type == P_DATA_TF else "accepted"
        return self._abort(f"sent a {kind} of {length} bytes, over the {limit} {agreed}")

    def _give_up(self, problem: str) -> bytes:
        """Read nothing more: pynetdicom sees the connection close, and closes it."""
        self.problem = problem
        self._refused = True
        self._wake_waiting()
        return b""

    def _wake_waiting(self) -> None:
        """Tell the association's thread, if it still waits for a request, that none is
        coming."""
        if not self.associated and self._wake is not None:
            self._wake()

    def _abort(self, problem: str) -> bytes:
        """Send an A-ABORT and read nothing more: pynetdicom sees the connection close."""
        with contextlib.suppress(OSError):
            self._send(ABORT_INVALID_PARAMETER)
        return self._give_up(f"{problem}: aborted (A-ABORT)")


def association_request_problem(pdu: bytes) -> str | None:
    """What makes an A-ASSOCIATE-RQ one pynetdicom cannot take, or None.

    pynetdicom decodes the request in its own thread, where an error (an even
    presentation context ID raises ValueError there) kills the thread, prints a raw
    traceback and leaves the connection hanging. The same decoding, done here first,
    turns any such error into a clean refusal.
    """
    try:
        request = A_ASSOCIATE_RQ_PDU()
        request.decode(pdu)
        request.to_primitive()
    except Exception as exc:  # noqa: BLE001 (any error of the decoder is the peer's fault)
        return f"{type(exc).__name__}: {shown(str(exc))}"
    return _context_problem(request)


def _context_problem(request: A_ASSOCIATE_RQ_PDU) -> str | None:
    ids = [
        item.presentation_context_id
        for item in request.variable_items
        if isinstance(item, PresentationContextItemRQ)
    ]
    if len(ids) != len(set(ids)):
        return "two presentation contexts have the same ID"
    return None


def guard_of(association: Any) -> PduGuard | None:
    """The guard under an association's reads, if it has one."""
    reader = getattr(association.dul.socket, "recv", None)
    return reader if isinstance(reader, PduGuard) else None


def how_it_ended(association: Any, *, stopping: bool = False) -> str | None:
    """Why an association ended abnormally, or None when nothing was wrong.

    Abnormal: a problem on the wire, or an instance still in transit (its sender got no
    answer; nothing of it was stored).
    """
    guard = guard_of(association)
    problem = guard.problem if guard is not None else None
    in_transit = _bytes_in_transit(association)
    if in_transit is None:
        return problem
    if problem is None:
        problem = _cause(association, guard, stopping)
    return f"{problem}; an instance in transit ({in_transit} bytes so far) was discarded"


def _cause(association: Any, guard: PduGuard | None, stopping: bool) -> str:
    if stopping:
        return "cut by the relay's stop"
    if guard is not None and guard.peer_aborted:
        return "aborted by the peer (A-ABORT)"
    if getattr(association, "_sent_abort", False) and guard is not None:
        # The limit it crossed, not the time since: this line is written after the abort,
        # later still on a loaded machine.
        limit = getattr(association, "network_timeout", None)
        quiet = limit if isinstance(limit, int | float) else time.monotonic() - guard.last_data
        return f"the peer sent nothing for {quiet:.0f} s: aborted (A-ABORT)"
    return "the connection closed"


def _bytes_in_transit(association: Any) -> int | None:
    """How much of an unfinished DIMSE message was received; None when none was."""
    message = getattr(association.dimse, "message", None)
    if message is None:
        return None
    received = 0
    for part in ("encoded_command_set", "data_set"):
        stream: Any = getattr(message, part, None)
        with contextlib.suppress(AttributeError, ValueError, OSError):
            received += int(stream.tell())
    return received
