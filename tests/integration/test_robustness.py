"""What the review of the receiving side found, each pinned by a test."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from isdr.app import build_relay
from isdr.db.series import list_series
from isdr.scp.dcmtk import SPOOL_NAME
from isdr.scp.storage import AtomicWriter
from isdr.scp.tuning import whole_reads
from isdr.synthetic import SeriesSpec, make_instance, write_series
from tests.helpers import free_port, relay_env, relay_settings, send_datasets, stored_files
from tests.unit.test_headers import with_undefined_length_sequence


def recorded(relay: object) -> int:
    return sum(s.instance_count for s in list_series(relay.engine))  # type: ignore[attr-defined]


def test_a_file_with_an_undefined_length_sequence_is_reconciled_at_start(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path)
    [path] = write_series(settings.INCOMING_DIR / "left", SeriesSpec(count=1))
    with_undefined_length_sequence(path)
    relay = build_relay(settings)
    relay.start()
    try:
        assert recorded(relay) == 1
    finally:
        relay.stop()


def test_a_file_cut_short_and_closed_in_place_is_not_recorded(tmp_path: Path) -> None:
    relay = build_relay(relay_settings(tmp_path))
    relay.start()
    try:
        [whole] = write_series(tmp_path / "src", SeriesSpec(count=1))
        (relay.settings.INCOMING_DIR / "cut.dcm").write_bytes(whole.read_bytes()[:-1000])
        time.sleep(1.5)
        assert recorded(relay) == 0
        assert (relay.settings.INCOMING_DIR / "cut.dcm").exists()
    finally:
        relay.stop()


@pytest.mark.usefixtures("dcmtk")
def test_a_relative_incoming_dir_still_knows_its_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = relay_settings(
        Path("."), RECEIVER="dcmtk", SCP_HOSTNAME="0.0.0.0", INCOMING_DIR=Path("in")
    )
    spool = Path("in") / SPOOL_NAME
    [whole] = write_series(spool, SeriesSpec(count=1))
    (spool / "cut.dcm").write_bytes(whole.read_bytes()[:-100])
    relay = build_relay(settings)
    relay.start()
    try:
        assert recorded(relay) == 1
        assert list_series(relay.engine)[0].peer_address == "storescp"
        assert not (spool / "cut.dcm").exists(), "an incomplete spool file is removed"
    finally:
        relay.stop()


def test_stop_cuts_a_peer_that_went_silent_in_the_middle_of_a_pdu(tmp_path: Path) -> None:
    relay = build_relay(relay_settings(tmp_path, STOP_TIMEOUT=1))
    relay.start()
    peer = socket.create_connection(("127.0.0.1", relay.scp.port))
    try:
        peer.sendall(struct.pack(">BBL", 0x01, 0, 5000) + b"\x00" * 100)  # then silence
        time.sleep(0.3)
        began = time.monotonic()
        relay.stop()
        assert time.monotonic() - began < 4
    finally:
        peer.close()


def test_an_announced_pdu_length_is_not_allocated_before_its_bytes_arrive() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"x" * 10)
        theirs.shutdown(socket.SHUT_WR)
        tracemalloc.start()
        data = whole_reads(ours)(2**31, time.monotonic() + 10)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert bytes(data) == b"x" * 10
    assert peak < 16 * 2**20


def test_a_storage_error_does_not_log_the_patient_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay = build_relay(relay_settings(tmp_path, WATCH_INCOMING=False))
    relay.start()
    try:
        (relay.settings.INCOMING_DIR / "PID-SECRET-77").write_text("a file where a folder goes")
        ds = make_instance(
            SeriesSpec(patient_id="PID-SECRET-77"), 0, "1.2.826.0.5", "1.2.826.0.5.1"
        )
        with caplog.at_level(logging.INFO):
            assert send_datasets(relay.scp.port, [ds]) == [0xC211]
        above_debug = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
        assert any("could not store" in line for line in above_debug)
        assert not any("PID-SECRET-77" in line for line in above_debug)
    finally:
        relay.stop()


def test_a_staging_folder_on_another_file_system_falls_back_to_writing_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    writer = AtomicWriter(tmp_path / "in", fsync=False, min_free_bytes=0, staging=staging)
    real_replace = os.replace

    def cross_device(source: str | Path, target: str | Path) -> None:
        if Path(source).parent == staging:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", cross_device)
    target = tmp_path / "in" / "a" / "x.dcm"
    writer.write(target, [b"data"], 4)
    assert target.read_bytes() == b"data"
    assert writer.staging is None
    assert list(staging.iterdir()) == []


@pytest.mark.usefixtures("dcmtk")
def test_storescp_does_not_outlive_a_killed_relay(tmp_path: Path) -> None:
    settings = relay_settings(
        tmp_path, RECEIVER="dcmtk", SCP_HOSTNAME="0.0.0.0", SCP_PORT=free_port()
    )
    env = {**os.environ, **relay_env(settings)}
    relay = subprocess.Popen([sys.executable, "-m", "isdr", "serve"], env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not listening(settings.SCP_PORT):
            time.sleep(0.1)
        assert listening(settings.SCP_PORT)
        relay.send_signal(signal.SIGKILL)
        relay.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and listening(settings.SCP_PORT):
            time.sleep(0.1)
        assert not listening(settings.SCP_PORT), "storescp still listens after the relay died"
    finally:
        relay.kill()
        if shutil.which("pkill"):
            subprocess.run(["pkill", "-f", f"storescp.*{settings.SCP_PORT}"], check=False)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_received_instances_are_not_recorded_twice_by_the_watcher(tmp_path: Path) -> None:
    relay = build_relay(relay_settings(tmp_path))
    relay.start()
    try:
        spec = SeriesSpec(modality="MR", count=20)
        datasets = [make_instance(spec, i, "1.2.826.0.6", "1.2.826.0.6.1") for i in range(20)]
        assert send_datasets(relay.scp.port, datasets) == [0] * 20
        time.sleep(3)  # the watcher's recheck of unsettled files has run by now
        [series] = list_series(relay.engine)
        assert (series.instance_count, series.peer_address.startswith("127.0.0.1")) == (20, True)
        assert len(stored_files(relay.settings.INCOMING_DIR)) == 20
    finally:
        relay.stop()
