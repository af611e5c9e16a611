"""Per-connection tuning of pynetdicom's transport, measured in bench/.

- TCP_NODELAY: pynetdicom leaves Nagle's algorithm on, so each response can wait for a
  40 ms delayed ACK.
- A shorter idle sleep in the DUL loop: pynetdicom's reader sleeps 1 ms whenever the
  socket has nothing to read, several times per instance; 0.2 ms gains 15-25% on one
  association, for about 5% more of a core per idle open association (measured).
- Whole-PDU reads: pynetdicom reads a PDU in 4 KiB `recv` calls appended to a bytearray;
  one `recv_into` with MSG_WAITALL into a buffer of the PDU's size does the same work in
  one system call. pynetdicom's DUL calls `socket.recv(n)` expecting exactly n bytes (or
  fewer when the peer closed), and that contract is kept.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

from isdr.scp.guard import PduGuard

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


def tune_connection(association: Any, timeout: float) -> None:
    """Apply the tunings to a pynetdicom Association whose connection just opened.

    The socket also gets a timeout: pynetdicom leaves an accepted socket blocking, so a
    peer that stops in the middle of a PDU would hold its thread (and a stop) forever.
    Its reads go through a PduGuard, which holds PDUs to the negotiated maximum length.
    """
    association.dul._run_loop_delay = DUL_LOOP_DELAY
    association_socket = association.dul.socket
    sock = getattr(association_socket, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = isinstance(sock, ssl.SSLSocket)
    read = association_socket.recv if tls else whole_reads(sock)
    max_pdata = int(association.acceptor.maximum_length or 0)
    association_socket.recv = PduGuard(read, sock.sendall, max_pdata, timeout)


READ_CHUNK = 1 << 20


def whole_reads(sock: socket.socket) -> Callable[[int], bytearray]:
    """A `recv(n)` that returns n bytes read with as few system calls as possible.

    The buffer grows with the data that arrives, at most a MiB at a time: the length a
    peer announces is not trusted with memory before its bytes are there.
    """

    def recv(nr_bytes: int) -> bytearray:
        buffer = bytearray(min(nr_bytes, READ_CHUNK))
        received = 0
        while received < nr_bytes:
            if received == len(buffer):
                buffer += bytearray(min(nr_bytes - received, READ_CHUNK))
            with memoryview(buffer) as view:
                count = sock.recv_into(view[received:], len(buffer) - received, socket.MSG_WAITALL)
            if count == 0:
                break
            received += count
        del buffer[received:]
        return buffer

    return recv
