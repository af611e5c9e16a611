"""Shared test helpers: settings for a temporary relay, DICOM bytes, real senders."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts

from isdr.config import Settings


def relay_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a relay living entirely under tmp_path, on a free port."""
    values: dict[str, Any] = {
        "SCP_HOSTNAME": "127.0.0.1",
        "SCP_PORT": free_port(),
        "SCP_AE_TITLE": "ISDR_TEST",
        "DATA_DIR": tmp_path / "data",
        "INCOMING_DIR": tmp_path / "incoming",
        "FINGERPRINT_DIR": tmp_path / "fingerprints",
        "CERT_FILE": tmp_path / "cert.crt",
        "USERS_FILE": tmp_path / "users.json",
        "SENDERS_FILE": tmp_path / "senders.json",
        "SERVERS_FILE": tmp_path / "servers.json",
        "MIN_FREE_DISK_MB": 0,
        "STOP_TIMEOUT": 5,
        "POST_AFTER": 3600,  # receiving tests: series stay open unless a test says otherwise
        "HTTP_PORT": 0,  # no HTTP side unless a test asks for it
        "HEARTBEAT_INTERVAL": 0,  # no heartbeats either
    }
    values.update(overrides)
    return Settings(**values)


def relay_env(settings: Settings) -> dict[str, str]:
    """The same settings as environment variables, for `isdr` in a subprocess."""
    return {name: str(getattr(settings, name)) for name in type(settings).model_fields}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def dead_port() -> Iterator[int]:
    """A port nobody listens on, for as long as the block lasts.

    A port from free_port() is free only for a moment: a test thread may bind it, or
    the connect may be given it as its own source port and talk to itself (seen once
    in CI as an "aborted" association). This one stays bound, without listening, so a
    connect to it is refused.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def dataset_part(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information group."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a Part 10 file"
    tag, vr = struct.unpack("<I2s", data[132:138])
    assert (tag, vr) == (0x00000002, b"UL"), "file meta group length missing"
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


def stored_files(root: Path) -> list[Path]:
    """Every instance file under INCOMING_DIR (no temporaries)."""
    return sorted(p for p in root.rglob("*.dcm") if not p.name.startswith("."))


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_datasets(
    port: int, datasets: Iterable[Dataset], ae_title: str = "ISDR_TEST", calling: str = "PYNET"
) -> list[int]:
    """Send datasets with pynetdicom in one association; returns each status."""
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts
    ae.dimse_timeout = 30
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established, "association was not accepted"
    statuses = []
    try:
        for ds in datasets:
            answer = assoc.send_c_store(ds)
            statuses.append(int(answer.Status) if "Status" in answer else -1)
    finally:
        assoc.release()
    return statuses


def read(path: Path) -> Dataset:
    return dcmread(path)
