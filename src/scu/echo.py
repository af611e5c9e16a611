"""C-ECHO: is a DICOM node (the relay itself, for the health check) answering?"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class EchoAnswer:
    """Whether the node answered C-ECHO with success, in words."""

    ok: bool
    detail: str


def echo(
    host: str, port: int, ae_title: str, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> EchoAnswer:
    """C-ECHO `ae_title` at host:port (over TLS with `tls`); a wildcard listen address
    means this machine."""
    address = "127.0.0.1" if host in WILDCARD_ADDRESSES else host
    ae = AE(ae_title="ISDR_ECHO")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    tls_args = None if tls is None else (tls, address)
    assoc = ae.associate(address, port, ae_title=ae_title, tls_args=tls_args)
    where = f"{ae_title}@{address}:{port}"
    if not assoc.is_established:
        return EchoAnswer(False, f"{where}: no association (is the relay running?)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = status.get("Status")
    if code != 0x0000:
        return EchoAnswer(False, f"{where}: C-ECHO answered {code!r}")
    return EchoAnswer(True, f"{where}: C-ECHO success")
