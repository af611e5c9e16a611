"""What `isdr serve` says when the Store SCP cannot listen: one line, with what to do."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from isdr.scp.listen import CannotListen, cannot_listen, check_can_listen


def failure(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def test_permission_denied_below_1024_says_how_to_fix_it() -> None:
    line = cannot_listen("0.0.0.0", 104, failure(errno.EACCES))
    assert line.startswith("cannot listen on SCP_HOSTNAME=0.0.0.0 SCP_PORT=104: permission denied")
    assert "SCP_PORT=11112" in line and "forward 104" in line
    assert "setcap cap_net_bind_service=+ep" in line


def test_a_port_in_use_says_so_and_names_the_variable() -> None:
    line = cannot_listen("127.0.0.1", 11112, failure(errno.EADDRINUSE))
    assert "already in use" in line and "SCP_PORT" in line


def test_an_address_that_is_not_this_machines_says_so() -> None:
    line = cannot_listen("192.0.2.1", 11112, failure(errno.EADDRNOTAVAIL))
    assert "192.0.2.1 is not an address of this machine" in line and "0.0.0.0" in line


def test_an_unknown_host_name_says_so() -> None:
    error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    line = cannot_listen("pacs-typo", 11112, error)
    assert "'pacs-typo' is not a known host name or address" in line


def test_every_message_is_one_line() -> None:
    for code in (errno.EACCES, errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EINVAL):
        assert "\n" not in cannot_listen("h", 104, failure(code))


def test_a_port_in_use_is_found_before_the_relay_starts() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(CannotListen, match="already in use"):
            check_can_listen("127.0.0.1", port)
