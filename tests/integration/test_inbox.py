"""The folder is the inbox: files placed under INCOMING_DIR by other means are recorded."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from isdr.app import Relay, build_relay
from isdr.db.series import list_series
from isdr.synthetic import SeriesSpec, write_series
from tests.helpers import relay_settings, stored_files


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def recorded_count(relay: Relay) -> int:
    return sum(s.instance_count for s in list_series(relay.engine))


def test_a_file_copied_in_is_sorted_and_recorded(relay: Relay, tmp_path: Path) -> None:
    [source] = write_series(tmp_path / "src", SeriesSpec(modality="MR", count=1))
    shutil.copy(source, relay.settings.INCOMING_DIR / "dropped.dcm")
    wait_for(lambda: recorded_count(relay) == 1)
    [stored] = stored_files(relay.settings.INCOMING_DIR)
    assert stored.parent.name == "MR"
    assert not (relay.settings.INCOMING_DIR / "dropped.dcm").exists()
    assert list_series(relay.engine)[0].peer_address == "inbox"


def test_a_folder_moved_in_is_recorded_whole(relay: Relay, tmp_path: Path) -> None:
    write_series(tmp_path / "batch", SeriesSpec(modality="CT", count=6))
    shutil.move(tmp_path / "batch", relay.settings.INCOMING_DIR / "batch")
    wait_for(lambda: recorded_count(relay) == 6)


@pytest.mark.parametrize("watch", [True, False])
def test_files_left_while_stopped_are_reconciled_at_start(tmp_path: Path, watch: bool) -> None:
    settings = relay_settings(tmp_path, WATCH_INCOMING=watch)
    settings.INCOMING_DIR.mkdir(parents=True)
    write_series(settings.INCOMING_DIR / "offline", SeriesSpec(count=3))
    [whole] = write_series(tmp_path / "one", SeriesSpec(count=1))
    (settings.INCOMING_DIR / "cut.dcm").write_bytes(whole.read_bytes()[:-100])
    (settings.INCOMING_DIR / ".half.dcm.0123abcd.part").write_bytes(b"partial")
    relay = build_relay(settings)
    relay.start()
    try:
        assert recorded_count(relay) == 3
        assert (settings.INCOMING_DIR / "cut.dcm").exists(), "an incomplete file is left alone"
        assert not (settings.INCOMING_DIR / ".half.dcm.0123abcd.part").exists()
    finally:
        relay.stop()


def test_files_written_by_dcmtk_storescp_into_incoming_are_recorded(
    relay: Relay, tmp_path: Path, dcmtk: None
) -> None:
    port = relay.scp.port + 1
    spool = relay.settings.INCOMING_DIR / "storescp"
    spool.mkdir()
    receiver = subprocess.Popen(["storescp", "-od", str(spool), "-aet", "FAST", str(port)])
    try:
        time.sleep(0.5)
        sent = write_series(tmp_path / "s", SeriesSpec(modality="MR", count=8))
        subprocess.run(
            ["storescu", "-aec", "FAST", "127.0.0.1", str(port), *map(str, sent)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(lambda: recorded_count(relay) == 8)
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 8


@pytest.mark.usefixtures("dcmtk")
def test_a_compressed_file_cut_inside_its_last_delimiter_is_incomplete(tmp_path: Path) -> None:
    from isdr.dicom.headers import file_is_complete

    [plain] = write_series(tmp_path, SeriesSpec(count=1))
    rle = tmp_path / "rle.dcm"
    subprocess.run(["dcmcrle", str(plain), str(rle)], check=True, capture_output=True)
    assert file_is_complete(rle)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(rle.read_bytes()[:-4])
    assert not file_is_complete(cut)


def test_a_file_moved_in_from_outside_is_recorded(relay: Relay, tmp_path: Path) -> None:
    [source] = write_series(tmp_path / "src", SeriesSpec(modality="MR", count=1))
    source.rename(relay.settings.INCOMING_DIR / "moved.dcm")
    wait_for(lambda: recorded_count(relay) == 1)


def test_a_link_to_a_file_outside_the_tree_is_not_recorded_and_logged_without_its_path(
    relay: Relay, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    [outside] = write_series(tmp_path / "PATIENT-SECRET", SeriesSpec(count=1))
    link = relay.settings.INCOMING_DIR / "PATIENT-LINK" / "evil.dcm"
    link.parent.mkdir()
    link.symlink_to(outside)
    wait_for(lambda: "outside INCOMING_DIR" in caplog.text)
    assert relay.inbox.reconcile() == 0
    assert recorded_count(relay) == 0 and link.is_symlink() and outside.exists()
    lines = [r.getMessage() for r in caplog.records if "outside INCOMING_DIR" in r.getMessage()]
    assert len(lines) == 1 and "PATIENT" not in lines[0] and "evil.dcm" in lines[0]


def test_a_file_under_a_linked_folder_outside_the_tree_is_not_recorded(
    relay: Relay, tmp_path: Path
) -> None:
    write_series(tmp_path / "elsewhere", SeriesSpec(count=2))
    (relay.settings.INCOMING_DIR / "linked").symlink_to(tmp_path / "elsewhere")
    relay.inbox.reconcile()
    for path in (relay.settings.INCOMING_DIR / "linked").rglob("*.dcm"):
        relay.inbox.guarded(relay.inbox.take, path)
    assert recorded_count(relay) == 0


def test_a_huge_series_description_is_cut_in_the_log_line(
    relay: Relay, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "Thorax " * 5_000  # 35 000 characters where DICOM allows 64
    write_series(tmp_path / "drop", SeriesSpec(count=1, series_description=huge))
    with caplog.at_level("INFO"):
        shutil.copytree(tmp_path / "drop", relay.settings.INCOMING_DIR / "drop")
        wait_for(lambda: recorded_count(relay) == 1)
    [line] = [r.getMessage() for r in caplog.records if "started receiving" in r.getMessage()]
    assert len(line) < 500 and "(34999 characters)" in line
