"""The post daemon's steps against a real SQLite file and a real HTTPS stand-in server.

The steps are driven one by one with a clock the test sets: no sleeping for POST_AFTER.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy.orm import Session

from isdr.app import Relay, build_relay
from isdr.db.jobs import list_jobs
from isdr.db.models import Job, JobState
from isdr.db.series import list_series
from isdr.scp.ingest import utcnow
from isdr.synthetic import SeriesSpec, write_series
from tests.helpers import relay_settings, stored_files
from tests.standin import StandIn


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    server = StandIn(tmp_path).start()
    yield server
    server.stop()


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
    relay = make_relay()
    url = standin.url_v1 if api == 1 else standin.url_v2
    fingerprint(relay, "x.json", inference_server_url=url, inference_server_api=api,
                model_human_readable_id="no-such-model")  # fmt: skip
    receive(relay, SeriesSpec(modality="CT", count=1))
    run_steps(relay)
    [job] = jobs(relay)
    assert (
        job.state == JobState.FAILED and "does not know the model 'no-such-model'" in job.last_error
    )


def test_a_submit_cut_by_a_crash_is_never_sent_again_on_its_own(
    make_relay: Any, standin: StandIn
) -> None:
    relay = make_relay()
    fingerprint(
        relay, "ct.json", inference_server_url=standin.url_v1, model_human_readable_id="ct-model"
    )
    receive(relay, SeriesSpec(modality="CT", count=1))
    relay.post.clock = lambda: utcnow() + timedelta(seconds=60)
    relay.post.route()
    [job] = jobs(relay)
    with Session(relay.engine) as session, session.begin():
        session.get_one(Job, job.id).state = JobState.SUBMITTING  # as a kill -9 would leave it
    restarted = make_relay()
    restarted.post.recover()
    run_steps(restarted, after_seconds=120)
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
    relay.post.clock = lambda: utcnow() + timedelta(seconds=60)
    relay.post.route()
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
    relay.post.clock = lambda: utcnow() + timedelta(seconds=60)
    relay.post.route()
    first, second = jobs(relay)
    with Session(relay.engine) as session, session.begin():
        session.get_one(Job, first.id).fingerprint = {"inference_server_url": "not a url"}
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
