"""What to do after a failed submit: a pure decision over the job's submit history."""

from __future__ import annotations

from pathlib import Path

from isdr.daemons.post import SUSPECT_LIMIT, PostSettings, submit_retry
from isdr.domain.submit import SubmitCounts, SubmitFailure

SETTINGS = PostSettings(
    incoming_dir=Path("in"), jobs_dir=Path("jobs"), post_after=10.0, delete_on_post=True,
    max_attempts=10, retry_delay=5.0, ambiguous_resends=2,
)  # fmt: skip


def test_a_plain_failure_waits_with_the_doubling_backoff() -> None:
    decision = submit_retry(SubmitCounts(3, 0, 0), SubmitFailure("503"), SETTINGS, "m")
    assert decision.wait == 20.0 and decision.message == "attempt 3 failed (503); next in 20 s"


def test_the_last_attempt_gives_up_with_the_reason() -> None:
    decision = submit_retry(SubmitCounts(10, 0, 0), SubmitFailure("503"), SETTINGS, "m")
    assert decision.wait is None and decision.message == "gave up after 10 attempts: 503"


def test_bare_500s_are_retried_without_doubling_then_name_the_unknown_model() -> None:
    bare = SubmitFailure("server error 500", suspect_model=True)
    first = submit_retry(SubmitCounts(2, 2, 0), bare, SETTINGS, "lungs")
    assert first.wait == SETTINGS.retry_delay
    verdict = submit_retry(SubmitCounts(3, SUSPECT_LIMIT, 0), bare, SETTINGS, "lungs")
    assert verdict.wait is None
    assert "most likely the server does not know the model 'lungs'" in verdict.message


def test_submits_that_may_have_left_a_task_are_sent_again_only_so_often() -> None:
    held = SubmitFailure("no answer", maybe_held=True)
    assert submit_retry(SubmitCounts(2, 0, 2), held, SETTINGS, "m").wait is not None
    verdict = submit_retry(SubmitCounts(3, 0, 3), held, SETTINGS, "m")
    assert verdict.wait is None and "may hold up to 3 task(s)" in verdict.message


def test_with_no_resends_allowed_the_first_ambiguous_submit_fails_the_job() -> None:
    at_most_once = PostSettings(**{**vars(SETTINGS), "ambiguous_resends": 0})
    held = SubmitFailure("no answer", maybe_held=True)
    assert submit_retry(SubmitCounts(1, 0, 1), held, at_most_once, "m").wait is None
