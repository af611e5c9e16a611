"""The post daemon's steps against a real SQLite file and a real HTTPS stand-in server.

The steps are driven one by one with a clock the test sets: no sleeping for POST_AFTER.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import text
from sqlalchemy.orm import Session

from isdr.app import Relay, build_relay
from isdr.db.jobs import list_jobs
from isdr.db.models import Job
from isdr.db.series import list_series
from isdr.demo.standin import StandIn
from isdr.domain.clock import utcnow
from isdr.domain.states import JobState
from isdr.synthetic import SeriesSpec, make_instance, write_series
from tests.helpers import dead_port, relay_env, relay_settings, send_datasets, stored_files


@pytest.fixture
def make_relay(tmp_path: Path, standin: StandIn) -> Iterator[Any]:
    built: list[Relay] = []

    def make(**overrides: Any) -> Relay:
        values: dict[str, Any] = {
            "CERT_FILE": standin.ca_file, "POST_AFTER": 5, "POST_TIMEOUT": 2,
            "POST_RETRY_DELAY": 1, "DELETE_ON_POST": False, **overrides,
        }  # fmt: skip
        relay = build_relay(relay_settings(tmp_path, **values))
        built.append(relay)
        return relay

    yield make
    for relay in built:
        relay.client.close()
        relay.engine.dispose()


def fingerprint(relay: Relay, name: str, **fields: Any) -> None:
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(fields))
    relay.registry.reload()


def receive(relay: Relay, spec: SeriesSpec) -> None:
    write_series(relay.settings.INCOMING_DIR / "drop", spec)
    relay.inbox.reconcile()


def token_from_variable(relay: Relay, standin: StandIn, variable: str) -> None:
    """A generation-2 fingerprint whose token is in the environment variable `variable`."""
    fingerprint(relay, "t.json", inference_server_url=standin.url_v2, inference_server_api=2,
                model_human_readable_id="ct-model",
                inference_server_token_env=variable)  # fmt: skip


def database_bytes(relay: Relay) -> list[bytes]:
    """The bytes of the SQLite database and its WAL and shared-memory files."""
    database = Path(relay.settings.database_url.removeprefix("sqlite:///"))
    return [f.read_bytes() for f in database.parent.glob(database.name + "*")]


def route_now(relay: Relay) -> None:
    """Route as if the series had been quiet for a minute; submit nothing yet."""
    relay.post.clock = lambda: utcnow() + timedelta(seconds=60)
    relay.post.route()


def run_steps(relay: Relay, after_seconds: float = 60) -> None:
    later = utcnow() + timedelta(seconds=after_seconds)
    relay.post.clock = lambda: later
    relay.post.route()
    relay.post.submit()
    relay.post.remove_files()


def jobs(relay: Relay) -> list[Job]:
    return list(reversed(list_jobs(relay.engine)))


@pytest.mark.parametrize("api", [1, 2])
def test_a_quiet_series_is_matched_and_submitted_once(
    make_relay: Any, standin: StandIn, api: int
) -> None:
    relay = make_relay()
    url = standin.url_v1 if api == 1 else standin.url_v2
    fingerprint(relay, "ct.json", modality_regex="CT", inference_server_url=url,
                model_human_readable_id="ct-model", inference_server_api=api)  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=4))
    run_steps(relay, after_seconds=1)
    assert standin.submissions == [], "not quiet for POST_AFTER yet"
    run_steps(relay)
    run_steps(relay, after_seconds=120)
    [submitted] = standin.submissions
    [job] = jobs(relay)
    assert (job.state, job.task_uid, job.attempts) == (JobState.SUBMITTED, submitted.uid, 0)
    assert submitted.model == "ct-model" and submitted.api == api
    assert submitted.filename == f"isdr-job-{job.id}.{'zip' if api == 1 else 'tar'}"
    assert submitted.field_name == ("zip_file" if api == 1 else "tar_file")
    series = list_series(relay.engine)[0]
    assert len(submitted.members) == 4
    if api == 2:
        assert all(m.startswith(f"1.2.840.10008.5.1.4.1.1.2/{series.series_instance_uid}/")
                   for m in submitted.members)  # fmt: skip
    else:
        assert all("/" not in m for m in submitted.members)
    assert series.state == "matched"
    assert not list((relay.settings.DATA_DIR / "jobs" / str(job.id)).glob("*")), "archive removed"


def test_two_matching_fingerprints_give_two_jobs(make_relay: Any, standin: StandIn) -> None:
    relay = make_relay()
    for name, model in (("a.json", "ct-model"), ("b.json", "mr-model")):
        fingerprint(relay, name, inference_server_url=standin.url_v1, model_human_readable_id=model)
    receive(relay, SeriesSpec(modality="CT", count=2))
    run_steps(relay)
    assert sorted(s.model for s in standin.submissions) == ["ct-model", "mr-model"]


def test_an_unmatched_series_is_marked_and_its_files_removed(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay(DELETE_ON_POST=True)
    fingerprint(relay, "mr.json", modality_regex="MR", inference_server_url=standin.url_v1,
                model_human_readable_id="mr-model")  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=3))
    run_steps(relay)
    [series] = list_series(relay.engine)
    assert (
        series.state == "unmatched" and "no fingerprint matched (1 checked)" in series.state_reason
    )
    assert stored_files(relay.settings.INCOMING_DIR) == []
    assert standin.submissions == []


def test_files_are_removed_only_after_a_successful_submit(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay(DELETE_ON_POST=True)
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=3))
    standin.behaviours.append("503")
    run_steps(relay)
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 3, "kept while not submitted"
    run_steps(relay, after_seconds=600)
    assert jobs(relay)[0].state == JobState.SUBMITTED
    assert stored_files(relay.settings.INCOMING_DIR) == []


def test_retry_then_success_after_two_503s(make_relay: Any, standin: StandIn) -> None:
    relay = make_relay()
    fingerprint(relay, "ct.json", inference_server_url=standin.url_v2, inference_server_api=2,
                model_human_readable_id="ct-model")  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=2))
    standin.behaviours.extend(["503", "503"])
    run_steps(relay, after_seconds=60)
    [job] = jobs(relay)
    assert (job.state, job.attempts) == (JobState.PENDING, 1)
    assert "503" in job.last_error
    run_steps(relay, after_seconds=61)  # the backoff (1 s) has passed
    run_steps(relay, after_seconds=63)  # and the doubled one (2 s)
    [job] = jobs(relay)
    assert (job.state, job.attempts) == (JobState.SUBMITTED, 2)
    assert len(standin.submissions) == 1
    with Session(relay.engine) as session:
        timeline = [e.message for e in session.get_one(Job, job.id).events]
    assert sum("attempt" in line and "failed" in line for line in timeline) == 2


def test_a_hung_server_is_cut_by_post_timeout_and_retried(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay(POST_TIMEOUT=0.5)
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=1))
    standin.hang_seconds = 3
    standin.behaviours.append("hang")
    run_steps(relay)
    [job] = jobs(relay)
    assert job.state == JobState.PENDING and "POST_TIMEOUT" in job.last_error
    assert "may hold a task" in job.last_error and standin.hung == 1  # the server took it
    run_steps(relay, after_seconds=120)
    assert jobs(relay)[0].state == JobState.SUBMITTED


def test_a_certificate_from_another_ca_fails_the_job_naming_cert_file(
    make_relay: Any, standin: StandIn, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    relay = make_relay(CERT_FILE=other_ca)
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [job] = jobs(relay)
    assert job.state == JobState.FAILED
    assert "CERT_FILE" in job.last_error and str(other_ca) in job.last_error
    assert "localhost" in job.last_error


@pytest.mark.parametrize("api", [1, 2])
def test_an_unknown_model_fails_at_once(make_relay: Any, standin: StandIn, api: int) -> None:
    """Generation 1 answers 550; generation 2 a bare 500, and lists its models to a token
    that allows it."""
    relay = make_relay()
    url = standin.url_v1 if api == 1 else standin.url_v2
    token = {} if api == 1 else {"inference_server_token": standin.internal_token}
    fingerprint(relay, "x.json", inference_server_url=url, inference_server_api=api,
                model_human_readable_id="no-such-model", **token)  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [job] = jobs(relay)
    assert (
        job.state == JobState.FAILED and "does not know the model 'no-such-model'" in job.last_error
    )


def test_bare_500s_to_a_submit_fail_the_job_within_a_minute_naming_the_likely_cause(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay(POST_RETRY_DELAY=0.2)
    fingerprint(relay, "x.json", inference_server_url=standin.url_v2, inference_server_api=2,
                model_human_readable_id="no-such-model")  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=1))
    route_now(relay)
    deadline = time.monotonic() + 30
    while jobs(relay)[0].state != JobState.FAILED and time.monotonic() < deadline:
        relay.post.submit()
        time.sleep(0.1)
    [job] = jobs(relay)
    assert job.state == JobState.FAILED and job.attempts == 3
    assert "most likely the server does not know the model 'no-such-model'" in job.last_error


def _cut_submit(make_relay: Any, standin: StandIn, *, archive_sent: bool, attempts: int = 0) -> Any:
    """A job left `submitting` as a kill -9 would leave it, and the relay started again."""
    relay = make_relay()
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=1))
    route_now(relay)
    [job] = jobs(relay)
    with Session(relay.engine) as session, session.begin():
        cut = session.get_one(Job, job.id)
        cut.state = JobState.SUBMITTING
        cut.archive_sent_at = utcnow() if archive_sent else None
        cut.attempts = attempts
    restarted = make_relay()
    restarted.post.recover()
    run_steps(restarted, after_seconds=120)
    return restarted


def test_a_submit_cut_before_its_last_bytes_is_sent_again_once(
    make_relay: Any, standin: StandIn
) -> None:
    restarted = _cut_submit(make_relay, standin, archive_sent=False)
    [job] = jobs(restarted)
    assert job.state == JobState.SUBMITTED
    assert len(standin.submissions) == 1


def test_a_job_whose_every_upload_a_crash_cut_gives_up_after_post_max_attempts(
    make_relay: Any, standin: StandIn
) -> None:
    restarted = _cut_submit(make_relay, standin, archive_sent=False, attempts=9)
    [job] = jobs(restarted)
    assert job.state == JobState.FAILED and "10 times: given up" in job.last_error
    assert standin.submissions == []


def test_a_submit_cut_after_the_whole_archive_went_is_never_sent_again_on_its_own(
    make_relay: Any, standin: StandIn
) -> None:
    restarted = _cut_submit(make_relay, standin, archive_sent=True)
    [job] = jobs(restarted)
    assert job.state == JobState.FAILED and "not sent again automatically" in job.last_error
    assert standin.submissions == []


def test_the_job_keeps_the_fingerprint_it_was_created_with(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay()
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=1))
    route_now(relay)
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="mr-model"
    )
    relay.post.submit()
    assert [s.model for s in standin.submissions] == ["ct-model"]


def test_one_broken_job_does_not_stop_the_others(make_relay: Any, standin: StandIn) -> None:
    relay = make_relay()
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=1, series_description="one"))
    receive(relay, SeriesSpec(modality="CT", count=1, series_description="two"))
    route_now(relay)
    first, second = jobs(relay)
    with relay.engine.begin() as connection:  # as a later, stricter version would find it
        connection.execute(
            text("UPDATE job SET fingerprint = :bad WHERE id = :id"),
            {"bad": '{"inference_server_url": "not a url"}', "id": first.id},
        )
    relay.post.submit()
    first, second = jobs(relay)
    assert first.state == JobState.FAILED and "not valid" in first.last_error
    assert second.state == JobState.SUBMITTED


def test_a_configured_token_is_sent_as_x_token_and_never_logged(
    make_relay: Any, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    relay = make_relay()
    fingerprint(relay, "t.json", inference_server_url=standin.url_v2, inference_server_api=2,
                model_human_readable_id="ct-model",
                inference_server_token="tok-s3cret")  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=1))
    with caplog.at_level("DEBUG", logger="isdr"):
        run_steps(relay)
    [submitted] = standin.submissions
    assert submitted.headers.get("X-Token") == "tok-s3cret"
    assert "tok-s3cret" not in caplog.text


def test_a_token_from_a_variable_is_sent_and_kept_out_of_the_database(
    make_relay: Any, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ISDR_TEST_SERVER_TOKEN", "tok-from-env")
    relay = make_relay()
    token_from_variable(relay, standin, "ISDR_TEST_SERVER_TOKEN")
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [submitted] = standin.submissions
    assert submitted.headers.get("X-Token") == "tok-from-env"
    stored = database_bytes(relay)
    assert any(b"ISDR_TEST_SERVER_TOKEN" in data for data in stored)  # the job names it...
    assert not any(b"tok-from-env" in data for data in stored)  # ...and does not hold it


def test_a_missing_token_variable_fails_the_job_saying_which(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay()
    token_from_variable(relay, standin, "ISDR_NO_SUCH_TOKEN_VARIABLE")
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [job] = jobs(relay)
    assert job.state == JobState.FAILED and "ISDR_NO_SUCH_TOKEN_VARIABLE" in job.last_error
    assert standin.submissions == []


def test_a_token_variable_with_a_line_break_fails_the_job_and_is_nowhere_written(
    make_relay: Any,
    standin: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ISDR_TEST_SERVER_TOKEN", "tok-first\r\nX-Injected: tok-second")
    relay = make_relay()
    token_from_variable(relay, standin, "ISDR_TEST_SERVER_TOKEN")
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [job] = jobs(relay)
    assert job.state == JobState.FAILED and "control character" in job.last_error
    assert standin.submissions == []
    stored = database_bytes(relay)
    assert not any(b"tok-" in data for data in stored)
    assert "tok-" not in caplog.text


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("nouid", "accepted (200) but no task uid"), ("400", "refused with 400")],
)
def test_answers_that_must_not_be_retried_fail_at_once(
    make_relay: Any, standin: StandIn, behaviour: str, reason: str
) -> None:
    relay = make_relay()
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=1))
    standin.behaviours.append(behaviour)
    run_steps(relay)
    run_steps(relay, after_seconds=600)
    [job] = jobs(relay)
    assert job.state == JobState.FAILED and reason in job.last_error
    assert standin.behaviours == deque(), "sent once, never again"


def test_an_api_1_url_without_its_trailing_slash_gets_a_hint(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay()
    url = standin.url_v1.rstrip("/")
    fingerprint(relay, "ct.json", inference_server_url=url, model_human_readable_id="ct-model")
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [job] = jobs(relay)
    assert job.state == JobState.FAILED and "trailing slash" in job.last_error


def test_a_server_that_cannot_be_reached_does_not_hold_up_the_others(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay()
    with dead_port() as port:
        dead = f"https://localhost:{port}/api/tasks/"
        fingerprint(
            relay, "a-dead.json", inference_server_url=dead, model_human_readable_id="ct-model"
        )
        fingerprint(
            relay,
            "b-live.json",
            inference_server_url=standin.url_v1,
            model_human_readable_id="ct-model",
        )
        receive(relay, SeriesSpec(modality="CT", count=1, series_description="one"))
        receive(relay, SeriesSpec(modality="CT", count=1, series_description="two"))
        run_steps(relay)
    states = sorted((j.fingerprint_name, j.state, j.attempts) for j in jobs(relay))
    assert states == [
        ("a-dead.json", JobState.PENDING, 0),  # skipped: its server was found down this round
        ("a-dead.json", JobState.PENDING, 1),
        ("b-live.json", JobState.SUBMITTED, 0),
        ("b-live.json", JobState.SUBMITTED, 0),
    ]


def test_a_file_a_later_round_still_uses_is_kept(make_relay: Any, standin: StandIn) -> None:
    relay = make_relay(DELETE_ON_POST=True)
    fingerprint(relay, "mr.json", modality_regex="MR", inference_server_url=standin.url_v1,
                model_human_readable_id="mr-model")  # fmt: skip
    spec = SeriesSpec(
        modality="CT",
        count=2,
        study_instance_uid="1.2.826.0.9",
        series_instance_uid="1.2.826.0.9.1",
    )
    receive(relay, spec)
    relay.post.clock = lambda: utcnow() + timedelta(seconds=60)
    relay.post.route()  # round 1: unmatched
    receive(relay, spec)  # the series sent again: round 2, same paths
    relay.post.remove_files()  # round 1's files go, except those round 2 uses: all of them
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 2
    assert sorted(s.round for s in list_series(relay.engine)) == [1, 2]


def test_a_series_whose_files_cannot_be_removed_does_not_stop_the_others(
    make_relay: Any, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = make_relay(DELETE_ON_POST=True)
    fingerprint(relay, "mr.json", modality_regex="MR", inference_server_url=standin.url_v1,
                model_human_readable_id="mr-model")  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=1, series_description="stuck"))
    receive(relay, SeriesSpec(modality="CT", count=1, series_description="free"))
    real_unlink = Path.unlink

    def refuse(path: Path, missing_ok: bool = False) -> None:
        if "stuck" in str(path):
            raise PermissionError(13, "Permission denied")
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    run_steps(relay)
    remaining = stored_files(relay.settings.INCOMING_DIR)
    assert len(remaining) == 1 and "stuck" in str(remaining[0])


def test_a_fingerprint_that_breaks_keeps_its_last_good_version(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay(DELETE_ON_POST=True)
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    (relay.settings.FINGERPRINT_DIR / "ct.json").write_text(
        '{"inference_server_url": '
    )  # half-saved
    relay.registry.reload()
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    assert [s.model for s in standin.submissions] == ["ct-model"]


def test_with_no_usable_fingerprint_series_are_held_not_deleted(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay(DELETE_ON_POST=True)
    relay.registry.reload()
    receive(relay, SeriesSpec(modality="CT", count=2))
    run_steps(relay)
    assert list_series(relay.engine)[0].state == "receiving"
    assert len(stored_files(relay.settings.INCOMING_DIR)) == 2


def test_a_stop_during_a_submit_never_leads_to_a_second_submit(
    tmp_path: Path, standin: StandIn
) -> None:
    values: dict[str, Any] = {
        "CERT_FILE": standin.ca_file, "POST_AFTER": 0.3, "POST_INTERVAL": 0.1,
        "POST_TIMEOUT": 30, "STOP_TIMEOUT": 1, "DELETE_ON_POST": False,
    }  # fmt: skip
    first = build_relay(relay_settings(tmp_path, **values))
    fingerprint(
        first, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    standin.hang_seconds = 3
    standin.behaviours.append("hang")
    first.start()
    receive(first, SeriesSpec(modality="CT", count=1))
    deadline = time.monotonic() + 10
    while standin.hung == 0:
        assert time.monotonic() < deadline, "the submit never reached the stand-in"
        time.sleep(0.05)
    began = time.monotonic()
    assert first.stop() is False, "a submit was on the wire"
    assert time.monotonic() - began < 4
    time.sleep(3)  # the hung request ends meanwhile
    second = build_relay(relay_settings(tmp_path, **values))
    second.start()
    time.sleep(1)
    second.stop()
    [job] = jobs(second)
    assert job.state == JobState.FAILED and "not sent again automatically" in job.last_error
    assert standin.hung + len(standin.submissions) == 1


def test_isdr_jobs_show_and_retry(make_relay: Any, standin: StandIn) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers import relay_env

    relay = make_relay()
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="no-such"
    )
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [job] = jobs(relay)
    assert job.state == JobState.FAILED
    env = {**os.environ, **relay_env(relay.settings)}

    def isdr(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "isdr", "jobs", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    shown = isdr("show", str(job.id))
    assert shown.returncode == 0
    assert "does not know the model 'no-such'" in shown.stdout
    assert [line.split()[2] for line in shown.stdout.splitlines()[2:]] == [
        "pending",
        "submitting",
        "failed",
    ]
    assert isdr("retry", str(job.id)).returncode == 0
    assert jobs(relay)[0].state == JobState.PENDING
    again = isdr("retry", str(job.id))
    assert again.returncode == 1 and "only a failed job can be retried" in again.stderr
    assert isdr("show", "999").returncode == 1


def test_a_fingerprint_can_take_series_from_some_senders_only(
    make_relay: Any, standin: StandIn
) -> None:
    from isdr.synthetic import make_instance
    from tests.helpers import send_datasets

    relay = make_relay()
    common = {"inference_server_url": standin.url_v1, "model_human_readable_id": "ct-model"}
    fingerprint(relay, "onco.json", calling_ae_title_regex="^ONCO_", **common)
    fingerprint(relay, "radio.json", calling_ae_title_regex="^RADIO_", **common)
    spec = SeriesSpec(modality="CT", count=2)
    datasets = [make_instance(spec, i, "1.2.3.4", "1.2.3.4.5") for i in range(2)]
    relay.scp.start()  # this file's relays do not listen unless asked
    try:
        assert send_datasets(relay.scp.port, datasets, calling="ONCO_CT1") == [0, 0]
    finally:
        relay.scp.stop(1.0)
    route_now(relay)
    assert [job.fingerprint_name for job in jobs(relay)] == ["onco.json"]


@pytest.fixture
def listening(make_relay: Any, standin: StandIn) -> Iterator[Relay]:
    """A relay whose Store SCP listens (the daemons are driven by the test), with a
    fingerprint that takes every CT series."""
    relay = make_relay()
    fingerprint(relay, "ct.json", modality_regex="CT", inference_server_url=standin.url_v1,
                model_human_readable_id="ct-model")  # fmt: skip
    relay.scp.start()
    yield relay
    relay.scp.stop(5)


def isdr_series(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    """`isdr series ...`, run as a person would, on the relay's database."""
    env = {**os.environ, **relay_env(relay.settings)}
    command = [sys.executable, "-m", "isdr", "series", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def two_patients_in_one_series(relay: Relay) -> int:
    """pynetdicom sends one series whose instances name two PatientIDs; its series id."""
    spec = SeriesSpec(modality="CT", count=3, patient_id="PID-FIRST-8812")
    datasets = [make_instance(spec, i, "1.2.826.0.1.20", "1.2.826.0.1.20.1") for i in range(3)]
    datasets[1].PatientID = "PID-OTHER-4471"
    assert send_datasets(relay.scp.port, datasets) == [0, 0, 0], "stored, and held"
    [series] = list_series(relay.engine)
    return series.id


def test_a_series_of_two_patients_is_held_visibly_and_never_submitted_on_its_own(
    listening: Relay, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    relay = listening
    series_id = two_patients_in_one_series(relay)
    run_steps(relay)
    run_steps(relay, after_seconds=3600)
    assert standin.submissions == [] and jobs(relay) == []
    [series] = list_series(relay.engine)
    reason = "held: instances of two patients (2 PatientIDs) in one series"
    assert (series.state, series.state_reason, series.instance_count) == ("held", reason, 3)
    [line] = [r.getMessage() for r in caplog.records if "held" in r.getMessage()
              and r.levelno == logging.WARNING]  # fmt: skip
    assert reason in line and f"isdr series release {series_id}" in line
    for record in caplog.records:
        if record.levelno > logging.DEBUG:
            assert "PID-" not in record.getMessage(), record.getMessage()
    listed = isdr_series(relay)
    assert listed.returncode == 0 and "PID-" not in listed.stdout
    assert f"series {series_id} {reason}" in listed.stdout
    assert [str(series_id), "held"] in [line.split()[:2] for line in listed.stdout.splitlines()]


def test_a_held_series_released_by_a_person_is_submitted_as_one(
    listening: Relay, standin: StandIn
) -> None:
    relay = listening
    series_id = two_patients_in_one_series(relay)
    run_steps(relay)
    assert standin.submissions == []
    released = isdr_series(relay, "release", str(series_id))
    assert released.returncode == 0, released.stderr
    assert "submits it as one series" in released.stdout
    run_steps(relay)
    [submitted] = standin.submissions
    assert len(submitted.members) == 3
    assert list_series(relay.engine)[0].state == "matched"
    again = isdr_series(relay, "release", str(series_id))
    assert again.returncode == 1 and "only a held series can be released" in again.stderr


def test_a_held_series_deleted_by_a_person_loses_its_files_and_is_never_submitted(
    listening: Relay, standin: StandIn
) -> None:
    relay = listening
    series_id = two_patients_in_one_series(relay)
    assert isdr_series(relay, "delete", str(series_id)).returncode == 0
    run_steps(relay)
    run_steps(relay, after_seconds=3600)
    assert standin.submissions == []
    [series] = list_series(relay.engine)
    assert series.state == "discarded" and series.files_removed_at is not None
    assert stored_files(relay.settings.INCOMING_DIR) == []


def test_an_instance_after_a_job_took_its_round_opens_the_next_round_even_while_another_waits(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay()
    fingerprint(relay, "ct.json", modality_regex="CT", inference_server_url=standin.url_v1,
                model_human_readable_id="ct-model")  # fmt: skip
    fingerprint(relay, "ct-mr.json", inference_server_url=standin.url_v1,
                model_human_readable_id="ct-model", max_wait=600,
                triggers=[{"name": "CT", "modality_regex": "CT"},
                          {"name": "MR", "modality_regex": "MR"}])  # fmt: skip
    spec = SeriesSpec(modality="CT", count=2, study_instance_uid="1.2.826.0.9.7",
                      series_instance_uid="1.2.826.0.9.7.1")  # fmt: skip
    receive(relay, spec)
    route_now(relay)
    [job] = jobs(relay)
    assert job.fingerprint_name == "ct.json"
    [first] = list_series(relay.engine)
    assert first.state == "waiting" and "no series for trigger 'MR'" in first.state_reason
    # One more slice of the same series: ct.json's job holds the first round, so it opens
    # the next round (decided afresh), instead of joining a round no job will send again.
    write_series(relay.settings.INCOMING_DIR / "late", dataclasses.replace(spec, count=1))
    relay.inbox.reconcile()
    rounds = sorted((s.round, s.instance_count) for s in list_series(relay.engine))
    assert rounds == [(1, 2), (2, 1)]
    # At +11 min ct-mr.json's wait has ended, and so has the first round.
    later = utcnow() + timedelta(seconds=660)
    relay.post.clock = lambda: later
    relay.post.route()
    ended = {s.round: s for s in list_series(relay.engine)}[1]
    assert ended.state == "matched"
    assert "ct-mr.json: not matched: no series for trigger 'MR'" in ended.state_reason
