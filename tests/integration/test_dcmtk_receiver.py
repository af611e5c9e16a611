"""Fast-ingest mode: dcmtk's storescp receives, the relay's inbox records."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from isdr.app import Relay, build_relay
from isdr.db.series import list_series
from isdr.scp.dcmtk import SPOOL_NAME
from isdr.synthetic import SeriesSpec, write_series
from tests.helpers import dataset_part, relay_settings, stored_files

pytestmark = pytest.mark.usefixtures("dcmtk")


@pytest.fixture
def fast_relay(tmp_path: Path) -> Iterator[Relay]:
    running = build_relay(relay_settings(tmp_path, RECEIVER="dcmtk", SCP_HOSTNAME="0.0.0.0"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def recorded(relay: Relay) -> int:
    return sum(s.instance_count for s in list_series(relay.engine))


def wait_recorded(relay: Relay, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while recorded(relay) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorded(relay) == count


def test_storescp_receives_and_every_instance_is_sorted_and_recorded(
    fast_relay: Relay, tmp_path: Path
) -> None:
    sent = write_series(tmp_path / "ct", SeriesSpec(modality="CT", count=6))
    sent += write_series(tmp_path / "mr", SeriesSpec(modality="MR", count=4))
    result = subprocess.run(
        ["storescu", "-aec", fast_relay.settings.SCP_AE_TITLE, "127.0.0.1",
         str(fast_relay.scp.port), *map(str, sent)],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    wait_recorded(fast_relay, 10)
    stored = {
        str(dcmread(p).SOPInstanceUID): p for p in stored_files(fast_relay.settings.INCOMING_DIR)
    }
    assert len(stored) == 10
    for original in sent:
        copy = stored[str(dcmread(original).SOPInstanceUID)]
        assert SPOOL_NAME not in copy.parts, "every file leaves the spool"
        assert dataset_part(copy) == dataset_part(original)
    assert sorted(
        (s.modality, s.instance_count, s.peer_address) for s in list_series(fast_relay.engine)
    ) == [
        ("CT", 6, "storescp"),
        ("MR", 4, "storescp"),
    ]


def test_a_spool_left_by_a_crash_is_reconciled_at_start(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, RECEIVER="dcmtk", SCP_HOSTNAME="0.0.0.0")
    spool = settings.INCOMING_DIR / SPOOL_NAME
    write_series(spool, SeriesSpec(count=2))
    [whole] = write_series(tmp_path / "one", SeriesSpec(count=1))
    (spool / "CT.cut.dcm").write_bytes(whole.read_bytes()[:-64])
    relay = build_relay(settings)
    relay.start()
    try:
        assert recorded(relay) == 2
        assert list(spool.iterdir()) == [], "complete files adopted, the cut one removed"
    finally:
        relay.stop()
