"""Per-connection tuning of pynetdicom's transport, measured in bench/.

- TCP_NODELAY: pynetdicom leaves Nagle's algorithm on, so each response can wait for a
  40 ms delayed ACK.
- A shorter idle sleep in the DUL loop: pynetdicom's reader sleeps 1 ms whenever the
  socket has nothing to read, several times per instance; 0.2 ms gains 15-25% on one
  association, for about 5% more of a core per idle open association (measured).
- Whole-PDU reads: pynetdicom reads a PDU in 4 KiB `recv` calls appended to a bytearray;
  one `recv_into` with MSG_WAITALL into a buffer of the PDU's size does the same work in
  one system call (under TLS, one per record). pynetdicom's DUL calls `socket.recv(n)`
  expecting exactly n bytes (or fewer when the peer closed), and that contract is kept;
  the guard adds a deadline to each call.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

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
    association_socket.recv = PduGuard(read, sock.sendall, limits, gave_up)


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
