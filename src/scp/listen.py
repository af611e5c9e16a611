"""Can the Store SCP listen where it is told to? Checked before the relay starts, and
told in one line that says what to do: port in use, an address that is not this
machine's, an unknown host name, a port below 1024 without the privilege."""

from __future__ import annotations

import errno
import socket

from isdr.errors import IsdrError

FIRST_UNPRIVILEGED_PORT = 1024


class CannotListen(IsdrError):
    """The Store SCP cannot listen on SCP_HOSTNAME:SCP_PORT."""


def check_can_listen(host: str, port: int, prefix: str = "SCP") -> None:
    """Bind host:port as the Store SCP will (an IPv4 address first, as pynetdicom picks;
    SO_REUSEADDR), then let it go; CannotListen saying why and what to do if that fails.
    `prefix` names the settings: SCP_HOSTNAME and SCP_PORT, or HTTP_HOSTNAME and HTTP_PORT."""
    try:
        entries = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = min(entries, key=lambda e: e[0] != socket.AF_INET)
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        raise CannotListen(cannot_listen(host, port, exc, prefix)) from exc


def cannot_listen(host: str, port: int, error: OSError, prefix: str = "SCP") -> str:
    """Why listening on host:port failed, and what to do, in one line."""
    where = f"cannot listen on {prefix}_HOSTNAME={host} {prefix}_PORT={port}"
    if isinstance(error, socket.gaierror):
        return (
            f"{where}: {host!r} is not a known host name or address ({error.strerror}); "
            "use an address of this machine, or 0.0.0.0 for all of them"
        )
    if error.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is already in use (another relay, or another service?); "
            f"stop it, or choose another {prefix}_PORT"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {host} is not an address of this machine; use one of its addresses, "
            "or 0.0.0.0 for all of them"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied; {_privileged_port_hint(port)}"
    return f"{where}: {error.strerror or error}"


def _privileged_port_hint(port: int) -> str:
    if port >= FIRST_UNPRIVILEGED_PORT:
        return "is the address or port reserved on this machine?"
    return (
        f"ports below {FIRST_UNPRIVILEGED_PORT} need a privilege: use SCP_PORT=11112 (any "
        "port from 1024) and forward 104 to it, or give the Python that runs the relay the "
        "capability: setcap cap_net_bind_service=+ep <its python binary> (the ISDR image "
        "has it)"
    )
