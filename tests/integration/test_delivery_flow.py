"""Predictions home: a relay in this process, the HTTPS stand-in, real DICOM destinations."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from isdr.app import Relay, build_relay
from isdr.db.delivery import job_details
from isdr.db.jobs import list_jobs, timeline
from isdr.db.models import DeliveredFile, Job
from isdr.demo.standin import StandIn
from isdr.synthetic import SeriesSpec, write_series
from tests.helpers import relay_env, relay_settings
from tests.integration.conftest import FAST
from tests.peers import RecordingSCP, Storescp


def fingerprint(relay: Relay, standin: StandIn, api: int, scus: list[dict[str, Any]]) -> None:
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fields = {
        "modality_regex": "^CT$",
        "inference_server_url": standin.url_v1 if api == 1 else standin.url_v2,
        "inference_server_api": api,
        "model_human_readable_id": "ct-model",
        "scus": scus,
    }
    (folder / "ct.json").write_text(json.dumps(fields))
    relay.registry.reload()


def to(port: int, ae_title: str) -> dict[str, Any]:
    return {"scu_ip": "127.0.0.1", "scu_port": port, "scu_ae_title": ae_title}


def receive_ct(relay: Relay, count: int = 3) -> None:
    write_series(relay.settings.INCOMING_DIR / "drop", SeriesSpec(count=count))
    relay.inbox.reconcile()


def the_job(relay: Relay) -> Job:
    jobs = list_jobs(relay.engine)
    assert len(jobs) == 1
    return jobs[0]


def wait_for_state(relay: Relay, *states: str, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        jobs = list_jobs(relay.engine)
        if jobs and jobs[0].state in states:
            return jobs[0]
        assert time.monotonic() < deadline, f"job stayed {jobs[0].state if jobs else 'absent'}"
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def events(relay: Relay, job_id: int) -> list[str]:
    found = timeline(relay.engine, job_id)
    assert found is not None
    return [event.message for event in found[1]]


@pytest.mark.parametrize("api", [1, 2])
def test_predictions_reach_the_destination_and_the_remote_task_is_deleted(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp, api: int
) -> None:
    relay = make_relay()
    fingerprint(relay, standin, api, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, "delivered", "failed")
    assert job.state == "delivered", job.last_error
    task = standin.task_of()
    assert {dcmread(p).SOPInstanceUID for p in storescp.files()} == set(task.instance_uids)
    wait_until(lambda: standin.deleted == [task.uid])
    assert len(standin.submissions) == 1
    kept = ["container.log", "mask.nii.gz"] if api == 2 else ["mask.nii.gz"]
    assert job_details(relay.engine, job.id)[1].kept == kept
    assert sorted(p.name for p in Path(job.output_dir or "").iterdir()) == kept
    unpacked = next(line for line in events(relay, job.id) if "not DICOM: " in line)
    assert all(name in unpacked for name in kept)


def test_a_task_the_server_failed_fails_the_job_with_that_reason(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    standin.outcome = "552"
    relay = make_relay()
    fingerprint(relay, standin, 1, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, "failed")
    assert job.failed_step == "poll" and "552" in job.last_error
    assert storescp.files() == []


def test_a_task_that_never_finishes_times_out_and_is_deleted_remotely(
    make_relay: Callable[..., Relay], standin: StandIn
) -> None:
    standin.outcome = "never"
    relay = make_relay(GET_TIMEOUT=1.5)
    fingerprint(relay, standin, 2, [])
    receive_ct(relay)
    job = wait_for_state(relay, "failed")
    assert "GET_TIMEOUT" in job.last_error
    # The real server refuses to delete a running task (500): the delete is tried again,
    # and goes through once the task has finished.
    wait_until(lambda: any("still running" in line or "cannot delete" in line
                           for line in events(relay, job.id)))  # fmt: skip
    standin.outcome = "ok"
    wait_until(lambda: standin.deleted == [standin.task_of().uid])


def test_a_task_the_server_forgot_fails_after_a_few_unknown_answers(
    make_relay: Callable[..., Relay], standin: StandIn
) -> None:
    standin.outcome = "never"
    relay = make_relay()
    fingerprint(relay, standin, 2, [])
    receive_ct(relay)
    wait_for_state(relay, "submitted")
    uid = standin.task_of().uid
    with standin.lock:
        del standin.tasks[uid]  # forgotten (a reinstalled server)
    job = wait_for_state(relay, "failed")
    assert "the task is gone from the server" in job.last_error
    assert "3 times in a row" in job.last_error


def test_an_unreachable_server_is_logged_once_per_outage(
    make_relay: Callable[..., Relay], standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    standin.outcome = "never"
    relay = make_relay()
    fingerprint(relay, standin, 1, [])
    receive_ct(relay)
    wait_for_state(relay, "submitted")
    caplog.set_level(logging.INFO, logger="isdr.daemons.poll")
    with standin.lock:  # all at once: one outage, not two
        standin.poll_behaviours.extend(["drop"] * 8)
    deadline = time.monotonic() + 10
    while standin.poll_behaviours and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    lines = [r.getMessage() for r in caplog.records if r.name == "isdr.daemons.poll"]
    assert sum("once per outage" in line for line in lines) == 1
    assert sum(line.endswith("answers again") for line in lines) == 1
    assert the_job(relay).state == "submitted"


def zip_with(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fine.txt", b"ok")
        archive.writestr(name, b"evil")
    return buffer.getvalue()


def tar_with_symlink() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    return buffer.getvalue()


def many_members(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            archive.writestr(f"f{index}.txt", b"x")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (zip_with("../../evil.txt"), "climbs out"),
        (tar_with_symlink(), "link"),
        (many_members(30), "more than 20 members"),
    ],
    ids=["dotdot", "symlink", "too-many-members"],
)
def test_a_hostile_archive_fails_the_job_and_writes_nothing_outside_its_folder(
    make_relay: Callable[..., Relay], standin: StandIn, tmp_path: Path, archive: bytes, reason: str
) -> None:
    standin.raw_output = archive
    relay = make_relay(OUTPUT_MAX_FILES=20)
    fingerprint(relay, standin, 1, [])
    receive_ct(relay)
    job = wait_for_state(relay, "failed")
    assert reason in job.last_error and job.failed_step == "poll"
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (Path(relay.settings.DATA_DIR) / "jobs" / str(job.id) / "output").exists()


def test_a_destination_down_at_first_gets_every_file_and_the_retries_are_recorded(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    late = RecordingSCP(ae_title="LATE")
    relay = make_relay()
    fingerprint(relay, standin, 2, [to(storescp.port, "DEST"), to(late.port, "LATE")])
    receive_ct(relay)
    deadline = time.monotonic() + 20
    while "attempt 2 failed" not in " ".join(_all_events(relay)):
        assert time.monotonic() < deadline, "no failed attempts recorded"
        time.sleep(0.05)
    assert len(storescp.files()) == standin.output_count  # the other one was served
    late.start()
    try:
        job = wait_for_state(relay, "delivered", "failed")
    finally:
        late.stop()
    assert job.state == "delivered", job.last_error
    assert sorted(late.received) == sorted(standin.task_of().instance_uids)
    deliveries = job_details(relay.engine, job.id)[0]
    assert [d.state for d in deliveries] == ["delivered", "delivered"]
    assert deliveries[1].attempts >= 2


def _all_events(relay: Relay) -> list[str]:
    jobs = list_jobs(relay.engine)
    return events(relay, jobs[0].id) if jobs else []


def test_a_refused_file_is_retried_and_the_job_fails_naming_the_destination(
    make_relay: Callable[..., Relay], standin: StandIn
) -> None:
    refusing = RecordingSCP(ae_title="PICKY").start()
    refusing.answers.extend([0xA900] * 100)
    try:
        relay = make_relay(DELIVERY_MAX_ATTEMPTS=2, DELIVERY_RETRY_DELAY=0.1)
        fingerprint(relay, standin, 1, [to(refusing.port, "PICKY")])
        receive_ct(relay)
        job = wait_for_state(relay, "failed")
    finally:
        refusing.stop()
    assert job.failed_step == "deliver"
    assert "PICKY@127.0.0.1" in job.last_error and "0xA900" in job.last_error
    assert standin.deleted == []  # kept on the server: `isdr jobs retry` can fetch it again


def test_a_hanging_server_does_not_hold_up_the_jobs_of_another(
    tmp_path: Path, standin: StandIn, storescp: Storescp
) -> None:
    (tmp_path / "other").mkdir()
    other = StandIn(tmp_path / "other", models=("mr-model",)).start()
    bundle = tmp_path / "cas.pem"
    bundle.write_text(standin.ca_file.read_text() + other.ca_file.read_text())
    standin.outcome, standin.hang_seconds = "never", 4.0
    settings = relay_settings(tmp_path, CERT_FILE=bundle, **FAST)
    relay = build_relay(settings)
    relay.start()
    try:
        fingerprint(relay, standin, 1, [])
        scu = to(storescp.port, storescp.ae_title)
        mr = {"modality_regex": "^MR$", "inference_server_url": other.url_v1,
              "model_human_readable_id": "mr-model", "scus": [scu]}  # fmt: skip
        (settings.FINGERPRINT_DIR / "mr.json").write_text(json.dumps(mr))
        receive_ct(relay)
        wait_for_state(relay, "submitted")
        with standin.lock:
            standin.poll_behaviours.extend(["hang"] * 20)
        time.sleep(0.3)  # the CT job's poll is now hanging
        relay.registry.reload()
        write_series(settings.INCOMING_DIR / "mr", SeriesSpec(modality="MR", count=2))
        relay.inbox.reconcile()
        began = time.monotonic()
        mr_job = wait_for_state(relay, "delivered", "failed", timeout=30)
        assert mr_job.fingerprint_name == "mr.json" and mr_job.state == "delivered"
        assert time.monotonic() - began < standin.hang_seconds
    finally:
        relay.stop()
        other.stop()


def isdr_jobs(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **relay_env(relay.settings)}
    command = [sys.executable, "-m", "isdr", "jobs", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_isdr_jobs_retry_delivers_a_job_that_failed_at_delivery(
    make_relay: Callable[..., Relay], standin: StandIn
) -> None:
    picky = RecordingSCP(ae_title="PICKY").start()
    picky.answers.extend([0, 0xA700, 0xA700, 0xA700])  # the second file, three times
    try:
        relay = make_relay(DELIVERY_MAX_ATTEMPTS=3, DELIVERY_RETRY_DELAY=0.1)
        fingerprint(relay, standin, 1, [to(picky.port, "PICKY")])
        receive_ct(relay)
        job = wait_for_state(relay, "failed")
        assert job.failed_step == "deliver" and "0xA700" in job.last_error
        retried = isdr_jobs(relay, "retry", str(job.id))
        assert retried.returncode == 0 and "delivering" in retried.stdout
        job = wait_for_state(relay, "delivered")
        shown = isdr_jobs(relay, "show", str(job.id)).stdout
    finally:
        picky.stop()
    assert "to PICKY@127.0.0.1" in shown and ": delivered, 2 confirmed" in shown
    assert set(picky.received) == set(standin.task_of().instance_uids)
    confirmed_first = picky.received[0]
    assert picky.received.count(confirmed_first) == 1  # confirmed once: never sent again
    wait_until(lambda: standin.deleted == [standin.task_of().uid])


def test_the_files_of_a_failed_job_are_removed_after_the_retention(
    make_relay: Callable[..., Relay], standin: StandIn
) -> None:
    standin.raw_output = zip_with("../evil.txt")
    relay = make_relay(JOB_FILES_RETENTION_HOURS=2 / 3600)
    fingerprint(relay, standin, 1, [])
    receive_ct(relay)
    job = wait_for_state(relay, "failed")
    folder = relay.settings.DATA_DIR / "jobs" / str(job.id)
    assert (folder / "output.download").is_file()  # kept for inspection
    deadline = time.monotonic() + 10
    while folder.exists():
        assert time.monotonic() < deadline, "the job's files were not removed"
        time.sleep(0.1)
    assert the_job(relay).files_removed_at is not None


def test_a_destination_with_an_ae_title_over_16_characters_alone_fails_and_says_why(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    relay = make_relay()  # the original relay's example fingerprint had one of 17
    fingerprint(relay, standin, 1, [to(storescp.port, "DEST"), to(1, "DICOM_ENDPOINT_AE")])
    receive_ct(relay)
    job = wait_for_state(relay, "delivered", "failed")
    assert len(storescp.files()) == standin.output_count  # the other one was served
    good, long = job_details(relay.engine, job.id)[0]
    assert (good.state, long.state, long.attempts) == ("delivered", "failed", 1)
    assert "AE title 'DICOM_ENDPOINT_AE' longer than 16 characters" in long.last_error
    assert job.state == "failed" and "longer than 16 characters" in job.last_error


def test_warning_statuses_deliver_each_file_once_and_are_recorded(
    make_relay: Callable[..., Relay], standin: StandIn
) -> None:
    warning = RecordingSCP(ae_title="WARNS").start()
    warning.answers.extend([0xB000, 0x0107] * 50)
    try:
        relay = make_relay(DELIVERY_MAX_ATTEMPTS=3, DELIVERY_RETRY_DELAY=0.1)
        fingerprint(relay, standin, 2, [to(warning.port, "WARNS")])
        receive_ct(relay)
        job = wait_for_state(relay, "delivered", "failed")
    finally:
        warning.stop()
    assert job.state == "delivered", job.last_error
    assert sorted(warning.received) == sorted(standin.task_of().instance_uids)  # once each
    with Session(relay.engine) as session:
        statuses = session.scalars(select(DeliveredFile.status)).all()
    assert len(statuses) == standin.output_count
    assert set(statuses) <= {0xB000, 0x0107} and 0xB000 in statuses
