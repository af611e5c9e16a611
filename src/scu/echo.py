"""C-ECHO: is a DICOM node (the relay itself, for the health check) answering? And if
not, why not, in words: rejected (with the A-ASSOCIATE-RJ's result, source and reason),
connection refused, no answer in time, or a failed TLS handshake."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from isdr.domain.access import HEALTH_CHECK_AE_TITLE

WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class EchoAnswer:
    """Whether the node answered C-ECHO with success, in words."""

    ok: bool
    detail: str


def echo(
    host: str,
    port: int,
    ae_title: str,
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    calling_ae_title: str = HEALTH_CHECK_AE_TITLE,
) -> EchoAnswer:
    """C-ECHO `ae_title` at host:port (over TLS with `tls`); a wildcard listen address
    means this machine."""
    address = "127.0.0.1" if host in WILDCARD_ADDRESSES else host
    where = f"{ae_title}@{address}:{port}"
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    connected = threading.Event()
    started = time.monotonic()
    assoc = ae.associate(
        address,
        port,
        ae_title=ae_title,
        tls_args=None if tls is None else (tls, address),
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.set())],
    )
    if not assoc.is_established:
        if not connected.is_set():
            return EchoAnswer(False, f"{where}: {connect_problem(address, port, timeout, tls)}")
        waited = time.monotonic() - started
        return EchoAnswer(False, f"{where}: {_not_accepted(assoc, waited, timeout, tls)}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    return _answer(where, status.get("Status"), timeout)


def _answer(where: str, code: int | None, timeout: float) -> EchoAnswer:
    if code is None:
        return EchoAnswer(False, f"{where}: no answer to the C-ECHO within {timeout:g} s")
    if code != 0x0000:
        return EchoAnswer(False, f"{where}: C-ECHO answered status 0x{code:04X}")
    return EchoAnswer(True, f"{where}: C-ECHO success")


def rejection(primitive: Any) -> str:
    """An A-ASSOCIATE-RJ in words: its result, source and reason."""
    return (
        f"association rejected (A-ASSOCIATE-RJ: {primitive.result_str}, source "
        f"{primitive.source_str}, reason: {primitive.reason_str})"
    )


def _not_accepted(assoc: Any, waited: float, timeout: float, tls: ssl.SSLContext | None) -> str:
    """Why an association the node let us connect for was not established."""
    if assoc.is_rejected:
        return rejection(assoc.acceptor.primitive)
    if waited >= timeout:
        return f"no answer to the association request within {timeout:g} s (timeout)"
    if tls is None:
        return (
            "the connection was closed without an answer (does the relay expect TLS? "
            "SCP_TLS_CERT_FILE is set there but not here?)"
        )
    return "the association request was aborted (A-ABORT) or the connection closed"


def connect_problem(address: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> str:
    """Why a connection to address:port fails, tried again on its own (pynetdicom tells
    the reason only in its own log)."""
    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except ConnectionRefusedError:
        return "connection refused: nothing listens there (is the relay running?)"
    except TimeoutError:
        return f"no answer to the connection within {timeout:g} s (timeout)"
    except socket.gaierror as exc:
        return f"unknown host {address!r} ({exc.strerror})"
    except OSError as exc:
        return f"cannot connect ({exc.strerror or exc})"
    with raw:
        if tls is not None:
            problem = _handshake_problem(raw, tls, address)
            if problem:
                return problem
    return "could not connect, then could when tried again (is the relay starting?)"


def _handshake_problem(raw: socket.socket, tls: ssl.SSLContext, address: str) -> str | None:
    try:
        with tls.wrap_socket(raw, server_hostname=address):
            return None
    except ssl.SSLError as exc:
        return f"the TLS handshake failed ({exc.reason or exc}): does the relay speak TLS?"
    except OSError as exc:
        return f"the TLS handshake failed ({exc.strerror or exc}): does the relay speak TLS?"
