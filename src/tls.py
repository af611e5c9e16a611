"""TLS contexts for DICOM: the Store SCP's, and one per destination that asks for it.

Files are read when a context is made; any problem becomes a TlsFilesError that names
the file and what is wrong with it, so a person can fix it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from isdr.domain.destination import DestinationTls
from isdr.errors import IsdrError


class TlsFilesError(IsdrError):
    """A certificate, key or CA file cannot be used."""


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """The Store SCP's context; with `client_ca_file`, senders must show a certificate
    that it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, str(cert_file), str(key_file))
    if client_ca_file is not None:
        _load_cas(context, str(client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: DestinationTls) -> ssl.SSLContext:
    """A context that verifies the destination against `tls.ca_file` (else the system's
    CAs) and shows the client certificate when one is configured."""
    context = ssl.create_default_context()
    if tls.ca_file:
        _load_cas(context, tls.ca_file)
    if tls.cert_file and tls.key_file:
        _load_chain(context, tls.cert_file, tls.key_file)
    context.check_hostname = tls.check_hostname
    return context


def self_check_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """For `isdr echo` to the relay's own TLS port: shows the SCP's own certificate (in
    case client certificates are required) and does not verify the answer, which comes
    from this relay."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _load_chain(context, str(cert_file), str(key_file))
    return context


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    for path in (cert_file, key_file):
        _readable(path)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TlsFilesError(
            f"the certificate {cert_file} and key {key_file} cannot be used together "
            f"({exc.reason or exc}): both must be PEM, the key unencrypted and matching"
        ) from exc


def _load_cas(context: ssl.SSLContext, ca_file: str) -> None:
    _readable(ca_file)
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsFilesError(
            f"the CA file {ca_file} holds no usable PEM certificate ({exc.reason or exc})"
        ) from exc


def _readable(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsFilesError(f"cannot read {path}: {exc.strerror or exc}") from exc
