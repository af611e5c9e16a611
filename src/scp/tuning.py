"""Per-connection tuning of pynetdicom's transport, measured in bench/.

- TCP_NODELAY: pynetdicom leaves Nagle's algorithm on, so each response can wait for a
  40 ms delayed ACK.
- A shorter idle sleep in the DUL loop: pynetdicom's reader sleeps 1 ms whenever the
  socket has nothing to read, several times per instance; 0.2 ms gains 15-25% on one
  association, for about 5% more of a core per idle open association (measured).
- Quiet connections wait instead of polling: pynetdicom's two threads per connection
  poll (the reader every 0.2 ms, the association every 1 ms) whether or not anything
  comes; 30 connections that send nothing cost more than a core (measured). Once a peer
  has sent nothing for QUIET_AFTER, both threads block for up to IDLE_WAIT on what they
  wait for (the socket, the message queue): they wake at once when it comes, so only
  the relay's own acts on a quiet connection (an abort at stop) wait, up to IDLE_WAIT.
- Whole-PDU reads: pynetdicom reads a PDU in 4 KiB `recv` calls appended to a bytearray;
  one `recv_into` with MSG_WAITALL into a buffer of the PDU's size does the same work in
  one system call (under TLS, one per record). pynetdicom's DUL calls `socket.recv(n)`
  expecting exactly n bytes (or fewer when the peer closed), and that contract is kept;
  the guard adds a deadline to each call.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

from isdr.scp.guard import PduGuard, Reader, WireLimits

logger = logging.getLogger(__name__)


DUL_LOOP_DELAY = 0.0002


def tune_libraries(*, pynetdicom_logging: bool) -> None:
    """Process-wide settings of pydicom and pynetdicom for a receiver.

    - pydicom validates every value it decodes (a regular expression per UID); the relay
      stores what it received as it is and checks the few tags it needs itself.
    - pynetdicom binds a logging handler to every PDU and DIMSE message unless told not
      to; when its log is off that work is wasted.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if pynetdicom_logging else "none"


def tune_connection(
    association: Any, limits: WireLimits, idle_timeout: float, gave_up: Callable[[], object]
) -> None:
    """Apply the tunings to a pynetdicom Association whose connection just opened.

    Its reads go through a PduGuard, which holds PDUs to the negotiated maximum length
    and each phase to its time; between reads the socket has `idle_timeout`, so that a
    send to a peer that stopped reading cannot hold the thread (or a stop) forever.
    """
    association.dul._run_loop_delay = DUL_LOOP_DELAY
    association_socket = association.dul.socket
    sock = getattr(association_socket, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.settimeout(idle_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    read = whole_reads(sock, idle_timeout)
    guard = PduGuard(read, sock.sendall, limits, gave_up)
    association_socket.recv = guard
    _wait_when_quiet(association, guard)


QUIET_AFTER = 0.25  # seconds without data after which a connection is quiet
IDLE_WAIT = 0.05  # how long a quiet connection's threads block for news


def _is_quiet(guard: PduGuard) -> bool:
    return not guard.busy and time.monotonic() - guard.last_data > QUIET_AFTER


def _wait_when_quiet(association: Any, guard: PduGuard) -> None:
    """Make the reader's `ready` and the association's `get_msg` block (briefly) on a
    quiet connection, where they would poll."""
    association_socket = association.dul.socket
    association_socket.__class__ = _patient_class(type(association_socket))
    dimse = association.dimse
    polling_get = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[int | None, Any]:
        if block or not _is_quiet(guard):
            return cast(tuple[int | None, Any], polling_get(block))
        try:
            return cast(tuple[int | None, Any], dimse.msg_queue.get(timeout=IDLE_WAIT))
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg


_PATIENT: dict[type, type] = {}


def _patient_class(base: type) -> type:
    """A subclass of pynetdicom's AssociationSocket whose `ready` waits when quiet."""
    if base in _PATIENT.values():
        return base
    if base not in _PATIENT:

        def ready(self: Any) -> bool:
            guard, sock = self.recv, self.socket
            if isinstance(guard, PduGuard) and sock is not None and _is_quiet(guard):
                pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
                if not pending:
                    with contextlib.suppress(OSError, ValueError):
                        select.select([sock], [], [], IDLE_WAIT)
            return bool(base.ready.fget(self))  # type: ignore[attr-defined]

        _PATIENT[base] = type(f"Patient{base.__name__}", (base,), {"ready": property(ready)})
    return _PATIENT[base]


READ_CHUNK = 1 << 20
_WAIT_ALL = {True: 0, False: socket.MSG_WAITALL}  # an SSLSocket takes no flags


def whole_reads(sock: socket.socket, idle_timeout: float | None = None) -> Reader:
    """A `recv(n, deadline)` that returns n bytes read with as few system calls as
    possible, or raises TimeoutError when they are not all there by `deadline` (a
    `time.monotonic()` value), however they trickle in.

    The buffer grows with the data that arrives, at most a MiB at a time: the length a
    peer announces is not trusted with memory before its bytes are there. The socket's
    timeout is set back to `idle_timeout` after each read.
    """
    flags = _WAIT_ALL[isinstance(sock, ssl.SSLSocket)]

    def recv(nr_bytes: int, deadline: float) -> bytearray:
        buffer = bytearray(min(nr_bytes, READ_CHUNK))
        received = 0
        try:
            while received < nr_bytes:
                if received == len(buffer):
                    buffer += bytearray(min(nr_bytes - received, READ_CHUNK))
                count = _read_into(sock, buffer, received, flags, deadline)
                if count == 0:
                    break
                received += count
        finally:
            sock.settimeout(idle_timeout)
        del buffer[received:]
        return buffer

    return recv


def _read_into(
    sock: socket.socket, buffer: bytearray, received: int, flags: int, deadline: float
) -> int:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the read's deadline passed")
    sock.settimeout(remaining)
    with memoryview(buffer) as view:
        return sock.recv_into(view[received:], len(buffer) - received, flags)
