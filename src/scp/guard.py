"""What a peer may send on the wire, and how its connection ended.

pynetdicom reads a PDU as a 6-byte header, then as many bytes as that header announces:
it does not hold a P-DATA-TF PDU to the maximum length the relay negotiated, nor any
other PDU to a sane size. `PduGuard` sits under pynetdicom's reads. A P-DATA-TF PDU over
the negotiated maximum (or another PDU over 1 MiB) is refused from its header, before
its bytes are read: the peer gets an A-ABORT and pynetdicom sees the connection close.
The guard also notes what went wrong on the wire (a peer silent or gone in the middle
of a PDU, an A-ABORT), so that the association's one closing log line can say it.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any

P_DATA_TF = 0x04
A_ABORT = 0x07
PDU_TYPES = range(0x01, 0x08)
MAX_OTHER_PDU = 1 << 20  # an A-ASSOCIATE-RQ with every storage class is about 20 kB
_HEADER = struct.Struct(">BxI")
_PDV_LENGTH = struct.Struct(">I")
# Source 2 (service provider), reason 6 (invalid PDU parameter value): PS3.8 9.3.8.
ABORT_INVALID_PARAMETER = struct.pack(">BxIxxBB", A_ABORT, 4, 0x02, 0x06)

Reader = Callable[[int], bytes | bytearray]


class PduGuard:
    """A `recv(n)` for pynetdicom that refuses oversized PDUs and notes trouble.

    pynetdicom calls it for a PDU's 6-byte header, then (for a known PDU type) for its
    body; the guard follows that rhythm to know which is which.
    """

    def __init__(
        self, read: Reader, send: Callable[[bytes], Any], max_pdata: int, timeout: float
    ) -> None:
        self._read = read
        self._send = send
        self.max_pdata = max_pdata  # 0: no limit
        self.timeout = timeout
        self._body: int | None = None  # the length of the body the next read is for
        self._body_type = 0
        self._refused = False
        self.problem: str | None = None  # what went wrong, for the closing log line
        self.peer_aborted = False
        self.last_data = time.monotonic()

    def __call__(self, count: int) -> bytes | bytearray:
        if self._refused:
            return b""  # as if closed: pynetdicom ends the association
        body, self._body = self._body, None
        what = "a PDU header" if body is None else f"a PDU of {body} bytes"
        try:
            data = self._read(count)
        except TimeoutError:
            self.problem = f"silent for {self.timeout:.0f} s in the middle of {what}: dropped"
            raise
        except OSError as exc:
            self.problem = f"connection error in the middle of {what}: {exc.strerror or exc}"
            raise
        if data:
            self.last_data = time.monotonic()
        if len(data) < count:
            if data or body is not None:
                self.problem = f"the connection closed in the middle of {what}"
            return data
        if body is None:
            return self._header(data)
        return self._check_items(data) if self._body_type == P_DATA_TF else data

    def _header(self, data: bytes | bytearray) -> bytes | bytearray:
        pdu_type, length = _HEADER.unpack_from(data)
        if pdu_type not in PDU_TYPES:
            self.problem = f"sent an unknown PDU type 0x{pdu_type:02X}: aborted"
            return data  # pynetdicom answers it with an A-ABORT, and reads no body
        limit = self.max_pdata if pdu_type == P_DATA_TF else MAX_OTHER_PDU
        if limit and length > limit:
            return self._refuse(pdu_type, length, limit)
        self.peer_aborted |= pdu_type == A_ABORT
        self._body, self._body_type = length, pdu_type
        return data

    def _check_items(self, body: bytes | bytearray) -> bytes | bytearray:
        """A P-DATA-TF body must be whole PDV items, each at least its two header bytes."""
        position = 0
        while position < len(body):
            if len(body) - position < 4:
                return self._refuse_items(position)
            (length,) = _PDV_LENGTH.unpack_from(body, position)
            if length < 2 or length > len(body) - position - 4:
                return self._refuse_items(position, length)
            position += 4 + length
        return body

    def _refuse_items(self, position: int, length: int | None = None) -> bytes:
        declared = "" if length is None else f" declaring {length} bytes"
        return self._abort(
            f"sent a P-DATA-TF PDU with a broken PDV item{declared} at byte {position}"
        )

    def _refuse(self, pdu_type: int, length: int, limit: int) -> bytes:
        kind = "P-DATA-TF PDU" if pdu_type == P_DATA_TF else f"PDU of type 0x{pdu_type:02X}"
        agreed = "negotiated" if pdu_type == P_DATA_TF else "accepted"
        return self._abort(f"sent a {kind} of {length} bytes, over the {limit} {agreed}")

    def _abort(self, problem: str) -> bytes:
        """Send an A-ABORT and read nothing more: pynetdicom sees the connection close."""
        self.problem = f"{problem}: aborted (A-ABORT)"
        self._refused = True
        with contextlib.suppress(OSError):
            self._send(ABORT_INVALID_PARAMETER)
        return b""


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
        quiet = time.monotonic() - guard.last_data
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
