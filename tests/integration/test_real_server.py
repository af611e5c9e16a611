"""The real InferenceServer's ways (the reference's "How the real server behaves"), and
what the relay makes of each: every job ends truthfully, nothing is left on the server."""

from __future__ import annotations

import io
import logging
import tarfile
import zipfile
from collections.abc import Callable

import pytest

from isdr.app import Relay
from isdr.demo.standin import StandIn, synthetic_prediction
from tests.integration.test_delivery_flow import (
    events,
    fingerprint,
    receive_ct,
    to,
    wait_for_state,
    wait_until,
)
from tests.peers import Storescp

END_STATES = ("delivered", "failed")


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """A tar as generation 2 sends it: flat, members may share a name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_of(files: list[tuple[str, bytes]], folders: list[str] = ()) -> bytes:  # type: ignore[assignment]
    """A stored zip as generation 1 sends it: top-level files and empty folder entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for folder in folders:
            archive.writestr(zipfile.ZipInfo(folder), b"")
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def dicom_files(count: int) -> list[tuple[str, bytes]]:
    return [(f"{uid}.dcm", data) for uid, data in synthetic_prediction(count, (8, 8))]


def ended(relay: Relay) -> str:
    job = wait_for_state(relay, *END_STATES)
    return job.state


def test_a_crashed_model_on_generation_2_is_no_delivery_and_says_why(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    standin.raw_output = tar_of([("container.log", b"")])  # all a crashed model leaves
    relay = make_relay()
    fingerprint(relay, standin, 2, [to(storescp.port, storescp.ae_title)])
    with caplog.at_level(logging.INFO):
        receive_ct(relay)
        job = wait_for_state(relay, *END_STATES)
    assert job.state == "failed" and job.failed_step == "poll"
    assert "no DICOM output: it returned only container.log (0 bytes)" in job.last_error
    ends = [r for r in caplog.records if f"job {job.id} failed" in r.getMessage()]
    assert [r.levelno for r in ends] == [logging.WARNING]
    assert "model ct-model on" in ends[0].getMessage()
    wait_until(lambda: standin.deleted == [job.task_uid])  # its input held patient data


def test_generation_1_with_no_output_file_names_what_the_server_sent(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    standin.raw_output = zip_of([("no_output_files_found.error", b"")])
    relay = make_relay()
    fingerprint(relay, standin, 1, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "failed"
    assert "no output (the server sent only no_output_files_found.error)" in job.last_error


def test_an_output_without_dicom_is_a_success_when_the_fingerprint_expects_it(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    standin.raw_output = tar_of([("report.json", b"{}"), ("container.log", b"")])
    relay = make_relay()
    fingerprint(relay, standin, 2, [to(storescp.port, storescp.ae_title)])
    path = relay.settings.FINGERPRINT_DIR / "ct.json"
    path.write_text(path.read_text()[:-1] + ', "dicom_output": "optional"}')
    relay.registry.reload()
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "delivered", job.last_error
    text = " | ".join(events(relay, job.id))
    assert "no DICOM file, as the fingerprint allows" in text and "report.json" in text
    assert list(storescp.folder.iterdir()) == []


def test_flattened_members_with_one_name_are_all_kept_and_every_dicom_delivered(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    predictions = dicom_files(2)
    standin.raw_output = tar_of(
        [*predictions, ("mask.nii.gz", b"a"), ("mask.nii.gz", b"b"), ("container.log", b"")]
    )
    relay = make_relay()
    fingerprint(relay, standin, 2, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "delivered", job.last_error
    text = " | ".join(events(relay, job.id))
    assert "kept under new names: mask.nii.gz -> mask~2.nii.gz" in text
    wait_until(lambda: len(list(storescp.folder.iterdir())) == 2)
    kept = sorted(p.name for p in (relay.settings.DATA_DIR / "jobs" / str(job.id)).rglob("mask*"))
    assert kept == ["mask.nii.gz", "mask~2.nii.gz"]


def test_generation_1_dropping_nested_outputs_is_said_in_the_job(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    standin.raw_output = zip_of(dicom_files(1), folders=["masks/"])
    relay = make_relay()
    fingerprint(relay, standin, 1, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "delivered", job.last_error
    text = " | ".join(events(relay, job.id))
    assert "the server dropped nested outputs: masks/ arrived empty" in text


@pytest.mark.parametrize("outcome", ["552", "553"])
def test_a_failed_task_is_deleted_on_the_server_too(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp, outcome: str
) -> None:
    standin.outcome = outcome
    relay = make_relay()
    fingerprint(relay, standin, 2, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "failed" and f"({outcome})" in job.last_error
    wait_until(lambda: standin.deleted == [job.task_uid])


def test_a_submit_without_an_answer_after_the_whole_archive_is_sent_again_and_shown(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    standin.hang_seconds = 3.0
    standin.behaviours.append("hang")  # took the archive, never answered in time
    relay = make_relay(POST_TIMEOUT=1, POST_RETRY_DELAY=0.2)
    fingerprint(relay, standin, 2, [to(storescp.port, storescp.ae_title)])
    with caplog.at_level(logging.INFO):
        receive_ct(relay)
        job = wait_for_state(relay, *END_STATES, timeout=60)
    assert job.state == "delivered" and job.ambiguous_submits == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("may hold a task from it" in text for text in warned)
    assert any(f"job {job.id} delivered" in text and "may have left" in text for text in warned)


def test_submits_that_never_get_an_answer_give_up_after_post_ambiguous_resends(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    standin.hang_seconds = 3.0
    standin.behaviours.extend(["hang"] * 3)
    relay = make_relay(POST_TIMEOUT=1, POST_RETRY_DELAY=0.2, POST_AMBIGUOUS_RESENDS=1)
    fingerprint(relay, standin, 2, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES, timeout=60)
    assert job.state == "failed" and job.ambiguous_submits == 2
    assert "the server may hold up to 2 task(s) of this job" in job.last_error
    assert len(standin.submissions) == 0 and standin.hung == 2


@pytest.mark.parametrize("api", [1, 2])
def test_a_task_deleted_behind_the_relays_back_ends_the_job_within_a_few_polls(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp, api: int
) -> None:
    standin.outcome = "never"  # it stays running until someone deletes it
    relay = make_relay()
    fingerprint(relay, standin, api, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    wait_until(lambda: bool(standin.tasks) and standin.task_of().polls >= 2)
    standin.delete_behind_back(standin.task_of().uid)  # as another client's DELETE would
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "failed" and "the task is gone from the server" in job.last_error


@pytest.mark.parametrize("api", [1, 2])
def test_a_crashed_model_fails_the_job_on_both_generations(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp, api: int
) -> None:
    standin.outcome = "crash"  # generation 1: 552; generation 2: only an empty container.log
    relay = make_relay()
    fingerprint(relay, standin, api, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    expected = "(552)" if api == 1 else "it returned only container.log (0 bytes)"
    assert job.state == "failed" and expected in job.last_error


@pytest.mark.parametrize("api", [1, 2])
def test_a_model_that_writes_nothing_is_no_delivery(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp, api: int
) -> None:
    standin.outcome = "empty"
    relay = make_relay()
    fingerprint(relay, standin, api, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "failed" and "the model produced no" in job.last_error


@pytest.mark.parametrize("api", [1, 2])
def test_outputs_in_sub_folders_are_never_lost_silently(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp, api: int
) -> None:
    standin.nested_outputs = True
    relay = make_relay()
    fingerprint(relay, standin, api, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "delivered", job.last_error
    text = " | ".join(events(relay, job.id))
    if api == 1:
        assert "the server dropped nested outputs: masks/" in text
    else:
        assert "mask.nii.gz -> mask~2.nii.gz" in text


def test_generation_1s_500_to_a_delete_that_worked_is_confirmed_not_alarmed(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    relay = make_relay()
    fingerprint(relay, standin, 1, [to(storescp.port, storescp.ae_title)])
    with caplog.at_level(logging.INFO):
        receive_ct(relay)
        job = wait_for_state(relay, *END_STATES)
        wait_until(lambda: any("a poll confirmed the task is gone" in line
                               for line in events(relay, job.id)))  # fmt: skip
    assert job.state == "delivered" and standin.live_tasks() == []
    assert not [r for r in caplog.records if "clean-up failed" in r.getMessage()]


def test_a_fingerprint_of_the_wrong_generation_fails_naming_the_generation(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    relay = make_relay()
    fingerprint(relay, standin, 1, [to(storescp.port, storescp.ae_title)])
    path = relay.settings.FINGERPRINT_DIR / "ct.json"
    path.write_text(path.read_text().replace(standin.url_v1, standin.url_v2 + "/api/tasks/"))
    relay.registry.reload()
    receive_ct(relay)
    job = wait_for_state(relay, *END_STATES)
    assert job.state == "failed" and job.failed_step == "submit"
    assert "is inference_server_api (1) the generation the server speaks?" in job.last_error


def test_a_task_left_by_a_submit_while_the_queue_was_down_is_counted_and_shown(
    make_relay: Callable[..., Relay], standin: StandIn, storescp: Storescp
) -> None:
    standin.hang_seconds, standin.queue_down = 2.0, True
    relay = make_relay(POST_TIMEOUT=1, POST_RETRY_DELAY=0.5)
    fingerprint(relay, standin, 2, [to(storescp.port, storescp.ae_title)])
    receive_ct(relay)
    wait_until(lambda: len(standin.submissions) == 1)
    standin.queue_down = False  # the queue is back: the orphan runs, the resend too
    job = wait_for_state(relay, *END_STATES, timeout=60)
    assert job.state == "delivered" and job.ambiguous_submits == 1
    orphans = [task for task in standin.live_tasks() if task.queued_while_down]
    assert len(orphans) == 1, "the server holds the task the relay could not know of"
