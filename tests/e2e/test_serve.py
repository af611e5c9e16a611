"""`isdr serve` run as a user runs it: a separate process, stopped by signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE

from isdr.config import Settings
from isdr.db.engine import make_engine
from isdr.db.series import list_series
from isdr.dicom.headers import file_is_complete
from isdr.synthetic import SeriesSpec, make_instance
from tests.helpers import free_port, relay_env, relay_settings, send_datasets, stored_files

ISDR = [sys.executable, "-m", "isdr"]


def start_relay(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **relay_env(settings)}
    with log.open("ab") as out:
        process = subprocess.Popen([*ISDR, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_until_echo(settings.SCP_PORT, process)
    return process


def wait_until_echo(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    ae = AE()
    ae.add_requested_context("1.2.840.10008.1.1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the relay exited during start-up"
        assoc = ae.associate("127.0.0.1", port, ae_title="ISDR_TEST")
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.2)
    raise AssertionError("the relay did not answer C-ECHO in time")


def wait_for(condition: Callable[[], bool], timeout: float = 30, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return relay_settings(tmp_path)


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


class Sender(threading.Thread):
    """Sends instances one by one and remembers which got Success."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        spec = SeriesSpec(modality="CT", count=count, rows=256, columns=256)
        self.datasets = [
            make_instance(spec, i, "1.2.826.0.2.1", "1.2.826.0.2.1.1") for i in range(count)
        ]
        self.succeeded: list[str] = []

    def run(self) -> None:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        ae.dimse_timeout = 3
        assoc = ae.associate("127.0.0.1", self.port, ae_title="ISDR_TEST")
        if not assoc.is_established:
            return
        for ds in self.datasets:
            if not assoc.is_established:
                break
            try:
                answer = assoc.send_c_store(ds)
            except (RuntimeError, OSError):
                break
            if "Status" in answer and answer.Status == 0:
                self.succeeded.append(str(ds.SOPInstanceUID))
        if assoc.is_established:
            assoc.release()


def test_sigterm_stops_within_ten_seconds_and_keeps_every_success(
    settings: Settings, tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    relay = start_relay(settings, tmp_path / "relay.log")
    stopped.append(relay)
    sender = Sender(settings.SCP_PORT, 400)
    sender.start()
    wait_for(lambda: len(sender.succeeded) >= 10)
    began = time.monotonic()
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0
    assert time.monotonic() - began < 10
    sender.join(timeout=30)
    recorded = {s.sop_instance_uid for s in instances(settings)}
    assert set(sender.succeeded) <= recorded
    assert "relay stopped" in (tmp_path / "relay.log").read_text()


def instances(settings: Settings) -> list[object]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from isdr.db.models import Instance

    with Session(make_engine(settings.database_url)) as session:
        return list(session.scalars(select(Instance)))


@pytest.mark.parametrize("kill_after", [3, 17])
def test_sigkill_during_a_transfer_loses_no_instance_that_got_success(
    settings: Settings, tmp_path: Path, stopped: list[subprocess.Popen[bytes]], kill_after: int
) -> None:
    log = tmp_path / "relay.log"
    relay = start_relay(settings, log)
    stopped.append(relay)
    sender = Sender(settings.SCP_PORT, 200)
    sender.start()
    wait_for(lambda: len(sender.succeeded) >= kill_after, step=0.001)
    relay.kill()
    relay.wait()
    sender.join(timeout=30)

    restarted = start_relay(settings, log)
    stopped.append(restarted)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=10) == 0

    rows = {i.sop_instance_uid: i for i in instances(settings)}  # type: ignore[attr-defined]
    assert set(sender.succeeded) <= set(rows), "an instance that got Success was lost"
    for row in rows.values():
        path = settings.INCOMING_DIR / row.path
        assert path.is_file() and path.stat().st_size == row.size and file_is_complete(path)
    on_disk = stored_files(settings.INCOMING_DIR)
    assert [p for p in settings.INCOMING_DIR.rglob(".*")] == [], "a temporary file is visible"
    assert len(on_disk) == len(rows), "a file on disk is not recorded"


def test_isdr_series_lists_counts_without_patient_ids(
    settings: Settings, tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    relay = start_relay(settings, tmp_path / "relay.log")
    stopped.append(relay)
    spec = SeriesSpec(modality="MR", count=3, patient_id="PID-SECRET-42", patient_name="Doe^Jane")
    datasets = [make_instance(spec, i, "1.2.826.0.3.1", "1.2.826.0.3.1.1") for i in range(3)]
    assert send_datasets(settings.SCP_PORT, datasets) == [0, 0, 0]
    env = {**os.environ, **relay_env(settings)}
    listing = subprocess.run([*ISDR, "series"], env=env, capture_output=True, text=True, check=True)
    assert "MR" in listing.stdout and "receiving" in listing.stdout and " 3 " in listing.stdout
    assert "PID-SECRET-42" not in listing.stdout and "Doe" not in listing.stdout
    relay.send_signal(signal.SIGTERM)
    relay.wait(timeout=10)
    log = (tmp_path / "relay.log").read_text()
    assert "PID-SECRET-42" not in log and "Doe" not in log
    assert list_series(make_engine(settings.database_url))[0].instance_count == 3


def test_a_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "SCP_PORT": "not-a-port", "DATA_DIR": str(tmp_path)}
    result = subprocess.run([*ISDR, "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "SCP_PORT" in result.stderr


def test_isdr_config_prints_the_effective_configuration(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "POST_INTERVAL": "0.5",
        "DELETE_ON_POST": "false",
        "DATA_DIR": str(tmp_path),
    }
    result = subprocess.run([*ISDR, "config"], env=env, capture_output=True, text=True, check=True)
    assert "POST_INTERVAL" in result.stdout and "0.5" in result.stdout
    assert any(line.split() == ["DELETE_ON_POST", "False"] for line in result.stdout.splitlines())


def test_a_second_relay_on_the_same_data_dir_is_refused(
    settings: Settings, tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    stopped.append(start_relay(settings, tmp_path / "relay.log"))
    env = {**os.environ, **relay_env(settings), "SCP_PORT": "1"}
    second = subprocess.run([*ISDR, "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "another relay is running with DATA_DIR" in second.stderr


def test_isdr_echo_answers_0_while_the_relay_runs_and_1_when_it_does_not(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, **relay_env(settings)}
    echo = [*ISDR, "echo"]
    down = subprocess.run(echo, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "connection refused" in down.stderr
    process = start_relay(settings, tmp_path / "relay.log")
    try:
        up = subprocess.run(echo, env=env, capture_output=True, text=True, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    assert up.returncode == 0 and "C-ECHO success" in up.stdout


def test_log_format_json_writes_one_json_object_per_line(
    settings: Settings, tmp_path: Path
) -> None:
    import json

    log = tmp_path / "relay.log"
    json_settings = relay_settings(tmp_path, LOG_FORMAT="json", SCP_PORT=settings.SCP_PORT)
    process = start_relay(json_settings, log)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries and {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("listening" in entry["message"] for entry in entries)


def test_what_the_relay_creates_is_readable_by_its_own_user_only(
    settings: Settings, tmp_path: Path
) -> None:
    process = start_relay(settings, tmp_path / "relay.log")
    try:
        spec = SeriesSpec(count=2)
        statuses = send_datasets(
            settings.SCP_PORT, [make_instance(spec, i, "1.2.3", "1.2.3.4") for i in range(2)]
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    assert statuses == [0, 0]
    created = [*settings.INCOMING_DIR.rglob("*"), *settings.DATA_DIR.rglob("*")]
    assert len(stored_files(settings.INCOMING_DIR)) == 2 and created
    open_to_others = [str(p) for p in created if p.stat().st_mode & 0o077]
    assert open_to_others == []


def test_the_http_side_answers_while_the_relay_runs_and_sigterm_still_stops_it(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    settings = relay_settings(tmp_path, HTTP_PORT=port, API_TOKEN="t" * 20)
    relay = start_relay(settings, tmp_path / "relay.log")
    stopped.append(relay)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/healthz"))
    assert httpx.get(f"{base}/readyz").json()["ready"] is True
    metrics = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer " + "t" * 20})
    assert "isdr_associations_active" in metrics.text
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0
    log = (tmp_path / "relay.log").read_text()
    assert f"HTTP side listening on http://127.0.0.1:{port}" in log and "relay stopped" in log
    assert not _answers(f"{base}/healthz")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
