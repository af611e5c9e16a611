"""The deliverer's pace: a destination's queued deliveries go out back to back, and a remote
delete the server does not answer holds up no delivery (found by bench/flood.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from isdr.daemons.deliver import Deliverer, DeliverSettings
from isdr.db import delivery as queue
from isdr.db.engine import make_engine
from isdr.db.jobs import timeline
from isdr.db.models import Delivery, Job, Series
from isdr.demo.standin import StandIn, Submission, synthetic_prediction
from isdr.dicom.files import describe
from isdr.domain.destination import Destination
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.states import JobState, SeriesState, Step
from isdr.inference.client import InferenceClient
from tests.peers import RecordingSCP

CLIENT_TIMEOUT = 3.0  # POST_TIMEOUT: how long a remote delete may go unanswered


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(f"sqlite:///{tmp_path / 'isdr.sqlite3'}")
    yield made
    made.dispose()


@pytest.fixture
def destination() -> Iterator[RecordingSCP]:
    scp = RecordingSCP(ae_title="PACE").start()
    yield scp
    scp.stop()


@pytest.fixture
def deliverer(tmp_path: Path, engine: Engine, standin: StandIn) -> Iterator[Deliverer]:
    client = InferenceClient(standin.ca_file, CLIENT_TIMEOUT)
    settings = DeliverSettings(
        jobs_dir=tmp_path / "jobs", calling_ae_title="ISDR_TEST", timeout=5, workers=4,
        associations=1, retry_delay=0.5, max_attempts=3, retention=3600,
        delete_remotely=True,
    )  # fmt: skip
    running = Deliverer(engine, client, settings, now)
    yield running
    running.stop()
    client.close()


def delivering_job(
    engine: Engine, jobs_dir: Path, standin: StandIn, destination: RecordingSCP
) -> int:
    """A job whose output (two CT instances) waits for delivery to `destination`, with a
    task the stand-in knows as finished (the real server refuses to delete a running one)."""
    uid = f"task-{time.monotonic_ns()}"
    standin.v1_unknown_first, standin.polls_before_ready = False, 0
    standin.record(Submission(1, "ct-model", "zip_file", "x.zip", [], {}, uid))
    scu = {"scu_ip": "127.0.0.1", "scu_port": destination.port, "scu_ae_title": "PACE"}
    fingerprint = Fingerprint.model_validate({
        "modality_regex": "CT", "inference_server_url": standin.url_v1,
        "model_human_readable_id": "ct-model", "scus": [scu],
    })  # fmt: skip
    job_id = _submitted_job(engine, fingerprint, uid)
    output = jobs_dir / str(job_id) / "output"
    output.mkdir(parents=True)
    for sop_uid, data in synthetic_prediction(2, (16, 16)):
        (output / f"{sop_uid}.dcm").write_bytes(data)
    records = [describe(output, p) for p in sorted(output.iterdir())]
    where = [Destination.at("127.0.0.1", destination.port, "PACE")]
    assert queue.record_output(engine, job_id, str(output), records, where, "unpacked", now())
    return job_id


def _submitted_job(engine: Engine, fingerprint: Fingerprint, task_uid: str) -> int:
    at = now()
    with Session(engine) as session, session.begin():
        series = Series(
            series_instance_uid=task_uid, study_instance_uid="1.2", patient_id="PACE",
            folder="pace", first_received_at=at, last_received_at=at,
            state=SeriesState.MATCHED,
        )  # fmt: skip
        session.add(series)
        session.flush()
        job = Job(
            series_id=series.id, fingerprint_name="pace.json", fingerprint=fingerprint,
            state=JobState.SUBMITTED, attempts=0, next_attempt_at=at, last_error="",
            task_uid=task_uid, created_at=at, updated_at=at, submitted_at=at,
        )  # fmt: skip
        session.add(job)
        session.flush()
        return int(job.id)


def delivery_states(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Delivery.state).order_by(Delivery.id)))


def job_state(engine: Engine, job_id: int) -> str:
    with Session(engine) as session:
        return session.get_one(Job, job_id).state


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_one_tick_sends_every_queued_delivery_of_a_destination_back_to_back(
    tmp_path: Path,
    engine: Engine,
    standin: StandIn,
    destination: RecordingSCP,
    deliverer: Deliverer,
) -> None:
    for _ in range(5):
        delivering_job(engine, tmp_path / "jobs", standin, destination)
    deliverer.tick()  # the only tick: before, it started one delivery per destination
    wait_for(lambda: delivery_states(engine) == ["delivered"] * 5, timeout=10)
    assert len(destination.received) == 10


def test_a_remote_delete_the_server_does_not_answer_holds_up_no_tick(
    tmp_path: Path,
    engine: Engine,
    standin: StandIn,
    destination: RecordingSCP,
    deliverer: Deliverer,
) -> None:
    job_id = delivering_job(engine, tmp_path / "jobs", standin, destination)
    deliverer.tick()
    wait_for(lambda: delivery_states(engine) == ["delivered"], timeout=10)
    standin.hang_seconds = CLIENT_TIMEOUT + 2
    standin.delete_behaviours.append("stall")
    ticked = threading.Thread(target=deliverer.tick)
    began = time.monotonic()
    ticked.start()
    ticked.join(timeout=CLIENT_TIMEOUT + 5)
    assert time.monotonic() - began < 1.0  # before, the tick waited out the delete
    wait_for(lambda: job_state(engine, job_id) == JobState.DELIVERED, timeout=CLIENT_TIMEOUT + 5)
    assert not standin.tasks[standin.submissions[-1].uid].deleted


def test_a_remote_delete_that_fails_is_tried_again_until_the_task_is_gone(
    tmp_path: Path,
    engine: Engine,
    standin: StandIn,
    destination: RecordingSCP,
    deliverer: Deliverer,
) -> None:
    job_id = delivering_job(engine, tmp_path / "jobs", standin, destination)
    standin.delete_behaviours.extend(["503", "503"])
    uid = standin.submissions[-1].uid

    def ticked_until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 15
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            deliverer.tick()
            time.sleep(0.1)

    ticked_until(lambda: standin.tasks[uid].deleted)
    assert job_state(engine, job_id) == JobState.DELIVERED
    found = timeline(engine, job_id)
    assert found is not None
    lines = [event.message for event in found[1]]
    assert sum("remote clean-up failed" in line and "next try in" in line for line in lines) == 2
    assert any(line.startswith("remote clean-up: task") for line in lines)
    assert queue.due_remote_deletes(engine, now() + timedelta(days=1)) == []


def test_a_due_remote_delete_is_called_off_when_the_job_is_retried(
    tmp_path: Path, engine: Engine, standin: StandIn, destination: RecordingSCP
) -> None:
    job_id = delivering_job(engine, tmp_path / "jobs", standin, destination)
    queue.fail(engine, job_id, Step.POLL, "timed out", now(), delete_remotely=True)
    assert [due.job_id for due in queue.due_remote_deletes(engine, now())] == [job_id]
    assert queue.retry_failed(engine, job_id, now()) is not None
    assert queue.due_remote_deletes(engine, now() + timedelta(days=1)) == []


def test_a_job_that_is_not_finished_gets_no_remote_delete(
    tmp_path: Path, engine: Engine, standin: StandIn, destination: RecordingSCP
) -> None:
    job_id = delivering_job(engine, tmp_path / "jobs", standin, destination)
    with Session(engine) as session, session.begin():
        session.get_one(Job, job_id).remote_delete_due_at = now()  # as a stale row could be
    assert queue.due_remote_deletes(engine, now()) == []


def test_a_database_from_before_these_columns_gains_them_and_their_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    make_engine(url).dispose()
    with sqlite3.connect(tmp_path / "old.sqlite3") as old:
        old.execute("DROP INDEX ix_job_remote_delete_due_at")
        old.execute("ALTER TABLE job DROP COLUMN remote_delete_due_at")
    upgraded = make_engine(url)
    try:
        names = {index["name"] for index in inspect(upgraded).get_indexes("job")}
        assert "ix_job_remote_delete_due_at" in names
    finally:
        upgraded.dispose()
