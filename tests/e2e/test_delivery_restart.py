"""`isdr serve` killed with SIGKILL while polling and while delivering: every job resumes."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from isdr.config import Settings
from isdr.db.engine import make_engine
from isdr.db.jobs import list_jobs
from isdr.demo.standin import StandIn
from isdr.synthetic import SeriesSpec, write_series
from tests.e2e.test_post_flow import storescu
from tests.e2e.test_serve import start_relay, wait_for
from tests.helpers import relay_settings
from tests.peers import RecordingSCP, Storescp

pytestmark = pytest.mark.usefixtures("dcmtk")


@pytest.fixture
def settings(tmp_path: Path, standin: StandIn) -> Settings:
    return relay_settings(
        tmp_path, CERT_FILE=standin.ca_file, POST_AFTER=0.5, POST_INTERVAL=0.2,
        GET_INTERVAL=0.2, DELIVERY_RETRY_DELAY=0.5,
    )  # fmt: skip


class Relays:
    """Starts `isdr serve` (again and again) and kills it."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings, self.log = settings, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_relay(self.settings, self.log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)


@pytest.fixture
def relays(settings: Settings, tmp_path: Path) -> Iterator[Relays]:
    running = Relays(settings, tmp_path / "relay.log")
    yield running
    running.stop()


def fingerprint(settings: Settings, standin: StandIn, scus: list[dict[str, Any]]) -> None:
    settings.FINGERPRINT_DIR.mkdir(parents=True, exist_ok=True)
    fields = {
        "modality_regex": "^CT$",
        "inference_server_url": standin.url_v1,
        "model_human_readable_id": "ct-model",
        "scus": scus,
    }
    (settings.FINGERPRINT_DIR / "ct.json").write_text(json.dumps(fields))


def send_ct(settings: Settings, tmp_path: Path) -> None:
    write_series(tmp_path / "ct", SeriesSpec(count=3))
    storescu(settings, sorted((tmp_path / "ct").rglob("*.dcm")))


def job_state(settings: Settings) -> str:
    engine = make_engine(settings.database_url)
    try:
        jobs = list_jobs(engine)
        return jobs[0].state if jobs else "none"
    finally:
        engine.dispose()


def test_a_kill_while_polling_resumes_polling_and_delivers_with_one_submit(
    settings: Settings, standin: StandIn, relays: Relays, tmp_path: Path
) -> None:
    destination = Storescp(tmp_path / "pacs").start()
    try:
        standin.outcome = "never"
        fingerprint(settings, standin, [{"scu_ip": "127.0.0.1", "scu_port": destination.port,
                                         "scu_ae_title": destination.ae_title}])  # fmt: skip
        relays.start()
        send_ct(settings, tmp_path)
        wait_for(lambda: bool(standin.tasks) and standin.task_of().polls >= 2, step=0.05)
        relays.kill()
        standin.outcome = "ok"
        relays.start()
        wait_for(lambda: job_state(settings) in ("delivered", "failed"), step=0.2)
        received = {dcmread(p).SOPInstanceUID for p in destination.files()}
    finally:
        destination.stop()
    assert job_state(settings) == "delivered"
    assert len(standin.submissions) == 1
    assert received == set(standin.task_of().instance_uids)


def test_a_kill_during_delivery_resumes_it_without_sending_confirmed_files_again(
    settings: Settings, standin: StandIn, relays: Relays, tmp_path: Path
) -> None:
    standin.output_count = 20
    destination = RecordingSCP(ae_title="SLOWPACS").start()
    destination.delay = 0.1
    try:
        fingerprint(settings, standin, [{"scu_ip": "127.0.0.1", "scu_port": destination.port,
                                         "scu_ae_title": "SLOWPACS"}])  # fmt: skip
        relays.start()
        send_ct(settings, tmp_path)
        wait_for(lambda: len(destination.received) >= 5, step=0.02)
        relays.kill()
        relays.start()
        wait_for(lambda: job_state(settings) in ("delivered", "failed"), step=0.2)
    finally:
        destination.stop()
    assert job_state(settings) == "delivered"
    assert len(standin.submissions) == 1
    assert set(destination.received) == set(standin.task_of().instance_uids)
    repeats = [uid for uid, count in Counter(destination.received).items() if count > 1]
    assert len(repeats) <= 1  # at most the one on the wire when the relay was killed
