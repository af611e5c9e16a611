"""Hostile or broken InferenceServers cannot freeze, flood or fool the relay.

Every answer body is bounded in size (1 MiB but for an output, OUTPUT_MAX_MB for it) and
the whole exchange in time (POST_TIMEOUT plus TRANSFER_MIN_RATE_KB's allowance); a slow
server holds at most GET_WORKERS_PER_SERVER pollers; an unexpected error on an output is
an attempt, counted on the job, and the third fails it.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from isdr.daemons import poll
from isdr.daemons.poll import Poller, PollSettings, after_error
from isdr.db.delivery import add_poll_error, fail, retry_failed
from isdr.db.engine import make_engine
from isdr.db.jobs import list_jobs
from isdr.db.models import Job, Series
from isdr.demo.standin import StandIn
from isdr.domain.clock import utcnow
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.states import JobState, Step
from isdr.inference.client import ANSWER_MAX_BYTES, InferenceClient, Outcome, Target
from isdr.inference.unpack import Limits
from isdr.synthetic import SeriesSpec, write_series
from tests.hostile_http import Behaviour, HostileServer


@pytest.fixture
def client(tmp_path: Path) -> Iterator[InferenceClient]:
    # POST_TIMEOUT 1 s: each read of a drip (a byte every 0.2 s) is far within it.
    made = InferenceClient(tmp_path / "no-ca.pem", timeout=1.0)
    yield made
    made.close()


@pytest.fixture
def servers() -> Iterator[list[HostileServer]]:
    started: list[HostileServer] = []
    yield started
    for server in started:
        server.stop()


def serve(servers: list[HostileServer], behaviour: Behaviour, **options: object) -> HostileServer:
    server = HostileServer(behaviour, **options).start()  # type: ignore[arg-type]
    servers.append(server)
    return server


def archive(tmp_path: Path) -> Path:
    path = tmp_path / "job-1.zip"
    path.write_bytes(b"z" * 1000)
    return path


# --- bodies with no end ---


def test_a_poll_answered_551_with_an_endless_body_is_cut_at_one_mib(
    client: InferenceClient, servers: list[HostileServer], tmp_path: Path
) -> None:
    server = serve(servers, "endless", status=551)
    answer = client.poll(Target(server.url, 1, "m"), "t1", tmp_path / "out.zip", 1 << 30)
    assert answer.status is None and "beyond 1 MiB" in answer.detail
    assert server.body_bytes_sent < server.cap, "the relay stopped reading at the limit"


def test_a_submit_answered_200_with_an_endless_body_fails_the_job_without_reading_it_all(
    client: InferenceClient, servers: list[HostileServer], tmp_path: Path
) -> None:
    server = serve(servers, "endless", status=200)
    answer = client.submit(Target(server.url, 1, "m"), archive(tmp_path))
    assert answer.outcome is Outcome.FAILED and "beyond 1 MiB" in answer.detail
    assert "accepted (200)" in answer.detail and not answer.task_uid
    assert server.body_bytes_sent < server.cap


def test_a_delete_answered_with_an_endless_body_is_tried_again_later(
    client: InferenceClient, servers: list[HostileServer]
) -> None:
    server = serve(servers, "endless", status=500)
    answer = client.delete(Target(server.url, 2, "m"), "t1")
    assert answer.outcome is Outcome.RETRY and "beyond 1 MiB" in answer.detail
    assert server.body_bytes_sent < server.cap


def test_an_endless_output_stops_at_output_max_mb(
    client: InferenceClient, servers: list[HostileServer], tmp_path: Path
) -> None:
    server = serve(servers, "endless", status=200)
    with pytest.raises(poll.OutputTooLarge):
        client.poll(Target(server.url, 1, "m"), "t1", tmp_path / "out.zip", 2 * ANSWER_MAX_BYTES)
    assert not (tmp_path / "out.zip").exists()
    assert server.body_bytes_sent < server.cap


def test_a_poll_answer_dripping_a_byte_at_a_time_is_cut_at_its_deadline(
    client: InferenceClient, servers: list[HostileServer], tmp_path: Path
) -> None:
    # 100 bytes at 0.2 s: 20 s, never 1 s without a byte (the read timeout never trips).
    server = serve(servers, "drip", status=551, cap=100)
    answer = client.poll(Target(server.url, 1, "m"), "t1", tmp_path / "out.zip", 1 << 30)
    assert answer.status is None and "did not finish its answer within POST_TIMEOUT" in (
        answer.detail
    )
    assert server.body_bytes_sent < server.cap


def test_a_submit_answer_dripping_a_byte_at_a_time_is_cut_and_its_server_left_for_the_round(
    client: InferenceClient, servers: list[HostileServer], tmp_path: Path
) -> None:
    server = serve(servers, "drip", status=200, cap=100)
    answer = client.submit(Target(server.url, 1, "m"), archive(tmp_path))
    assert answer.outcome is Outcome.RETRY and answer.cut and answer.maybe_held
    assert "did not finish its answer within POST_TIMEOUT" in answer.detail
    assert server.body_bytes_sent < server.cap


# --- one slow server does not starve the others' jobs ---


def database(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'isdr.sqlite3'}")


def submitted_job(engine: Engine, url: str, task_uid: str, poll_errors: int = 0) -> int:
    """A job the server at `url` holds as `task_uid` (generation 1)."""
    now = utcnow()
    fingerprint = Fingerprint(inference_server_url=url, model_human_readable_id="m")  # type: ignore[arg-type]
    with Session(engine) as session, session.begin():
        series = Series(
            series_instance_uid=f"1.2.3.{task_uid}", study_instance_uid="1.2", patient_id="P",
            folder="f", first_received_at=now, last_received_at=now, state="matched",
        )  # fmt: skip
        session.add(series)
        session.flush()
        job = Job(
            series_id=series.id, fingerprint_name="f", fingerprint=fingerprint,
            state=JobState.SUBMITTED, attempts=1, next_attempt_at=now, last_error="",
            task_uid=task_uid, created_at=now, updated_at=now, submitted_at=now,
            poll_errors=poll_errors,
        )  # fmt: skip
        session.add(job)
        session.flush()
        return job.id


def poller(engine: Engine, client: InferenceClient, tmp_path: Path, interval: float) -> Poller:
    settings = PollSettings(
        jobs_dir=tmp_path / "jobs", interval=interval, timeout=3600, workers=4,
        limits=Limits(1 << 30, 100), delete_remotely=False, per_server=2,
    )  # fmt: skip
    return Poller(engine, client, settings, utcnow)


def job_row(engine: Engine, job_id: int) -> Job:
    with Session(engine) as session:
        return session.get_one(Job, job_id)


def test_a_healthy_servers_jobs_are_polled_while_another_server_drips(
    tmp_path: Path, servers: list[HostileServer]
) -> None:
    dripping = serve(servers, "drip", status=551, pace=0.2, cap=10**6)
    healthy = serve(servers, "status", status=551)
    engine = database(tmp_path)
    for n in range(6):
        submitted_job(engine, dripping.url, f"slow-{n}")
    submitted_job(engine, healthy.url, "fine")
    # POST_TIMEOUT of 30 s: the dripping polls hold their threads all through the test.
    client = InferenceClient(tmp_path / "no-ca.pem", timeout=30.0)
    polling = poller(engine, client, tmp_path, interval=0.1)
    polling.start()
    try:
        deadline = time.monotonic() + 10
        while healthy.requests < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        polling.stop()
        for server in servers:
            server.stop()
        client.close()
    assert healthy.requests >= 5, "the healthy server's job was not polled"
    assert dripping.requests <= 2, "no more than GET_WORKERS_PER_SERVER hold the slow server"


# --- outputs that loop ---


def tar_output() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("result.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"ok"))
    return buffer.getvalue()


@pytest.fixture
def judging_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault of the relay's own (the unexpected error): judging any output raises."""

    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("a bug in judging")

    monkeypatch.setattr(poll, "judge_output", broken)


def poll_until_failed(engine: Engine, job_id: int, polling: Poller) -> Job:
    polling.start()
    try:
        deadline = time.monotonic() + 20
        while job_row(engine, job_id).state != JobState.FAILED and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # time for any further download to show
    finally:
        polling.stop()
    return job_row(engine, job_id)


@pytest.mark.usefixtures("judging_fails")
def test_an_output_that_raises_an_unexpected_error_fails_the_job_after_three_attempts(
    tmp_path: Path, servers: list[HostileServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(servers, "output", payload=tar_output())
    engine = database(tmp_path)
    job_id = submitted_job(engine, server.url, "t1")
    client = InferenceClient(tmp_path / "no-ca.pem", timeout=5.0)
    with caplog.at_level(logging.INFO):
        job = poll_until_failed(engine, job_id, poller(engine, client, tmp_path, 0.05))
    client.close()
    assert job.state == JobState.FAILED and job.failed_step == "poll"
    assert "gave up after 3 unexpected errors" in job.last_error
    assert "RuntimeError" in job.last_error and job.poll_errors == 3
    assert server.requests == 3, "downloaded once per attempt, no more"
    errors = [r for r in caplog.records if r.name == poll.__name__ and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unexpected error" in errors[0].getMessage(), "logged once"


@pytest.mark.usefixtures("judging_fails")
def test_attempts_at_an_output_are_counted_across_restarts(
    tmp_path: Path, servers: list[HostileServer]
) -> None:
    server = serve(servers, "output", payload=tar_output())
    engine = database(tmp_path)
    job_id = submitted_job(engine, server.url, "t1", poll_errors=2)  # two before a restart
    client = InferenceClient(tmp_path / "no-ca.pem", timeout=5.0)
    job = poll_until_failed(engine, job_id, poller(engine, client, tmp_path, 0.05))
    client.close()
    assert job.state == JobState.FAILED and server.requests == 1


def test_unexpected_errors_wait_longer_each_time_and_the_third_gives_up() -> None:
    assert after_error(1, 15) == 15
    assert after_error(2, 15) == 30
    assert after_error(3, 15) is None


def test_a_job_retried_by_hand_starts_its_count_again(tmp_path: Path) -> None:
    engine = database(tmp_path)
    job_id = submitted_job(engine, "https://server.example/tasks/", "t1", poll_errors=2)
    assert add_poll_error(engine, job_id, "unexpected error", utcnow()) == 3
    fail(engine, job_id, Step.POLL, "gave up", utcnow() + timedelta(seconds=1))
    retry_failed(engine, job_id, utcnow())
    assert job_row(engine, job_id).poll_errors == 0


def test_a_server_dripping_its_submit_answer_does_not_hold_up_submits_to_another(
    make_relay: Any, standin: StandIn, servers: list[HostileServer]
) -> None:
    dripping = serve(servers, "drip", status=200, pace=0.2, cap=10**6)
    relay = make_relay(POST_TIMEOUT=30)  # the drip's reads never trip it: only the lanes help
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, modality, url in (("slow", "CT", dripping.url), ("fine", "MR", standin.url_v1)):
        (folder / f"{name}.json").write_text(json.dumps({
            "modality_regex": modality, "inference_server_url": url,
            "model_human_readable_id": "ct-model",
        }))  # fmt: skip
    relay.registry.reload()
    for modality in ("CT", "MR"):
        write_series(relay.settings.INCOMING_DIR / modality, SeriesSpec(modality=modality))
        relay.inbox.reconcile()
        time.sleep(1.0)  # the slow server's job is due first
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and standin.submissions == []:
        time.sleep(0.1)
    states = {job.fingerprint_name: job.state for job in list_jobs(relay.engine)}
    assert len(standin.submissions) == 1, "the other server's job was submitted meanwhile"
    assert states["slow.json"] == JobState.SUBMITTING, "while the slow server still drips"
    dripping.stop()
