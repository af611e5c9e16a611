"""The crash loop's checks fail when they should: lost, doubled or stray work is caught."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from bench.crash_checks import (
    AMBIGUOUS,
    Facts,
    JobRow,
    RoundRow,
    SentInstance,
    Submission,
    job_id_of,
    judge,
)

SERIES = "1.2.3"


def job(
    job_id: int = 1, series_id: int = 1, uids: tuple[str, ...] = ("a", "b"), **kw: str
) -> JobRow:
    fields = {"state": "delivered", "last_error": "", "task_uid": f"t{job_id}", **kw}
    return JobRow(
        job_id, series_id, SERIES, series_id, "ct.json", fields["state"], fields["last_error"],
        fields["task_uid"], frozenset(uids),
    )  # fmt: skip


def archive(
    job_id: int = 1, uids: tuple[str, ...] = ("a", "b"), deleted: bool = True
) -> Submission:
    return Submission(job_id, f"t{job_id}", frozenset(uids), (f"p{job_id}",), deleted)


def facts(**changes: object) -> Facts:
    """One series of two instances, one job, delivered to two destinations."""
    base = Facts(
        instances=[SentInstance("a", SERIES, 1, True), SentInstance("b", SERIES, 1, True)],
        submissions=[archive()],
        jobs=[job()],
        rounds=[RoundRow(1, SERIES, 1, "matched")],
        destinations={"A": Counter({"p1": 1}), "B": Counter({"p1": 1})},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_clean_run_passes_with_its_figures() -> None:
    verdict = judge(facts())
    assert verdict.passed, verdict.failures
    assert verdict.figures["submissions"] == 1
    assert verdict.figures["duplicates_per_destination"] == {"A": 0, "B": 0}


def test_an_instance_that_got_success_and_reached_no_archive_is_lost() -> None:
    verdict = judge(facts(submissions=[archive(uids=("a",))], jobs=[job(uids=("a",))]))
    assert any("b of series" in f and "in no accepted archive" in f for f in verdict.failures)


def test_a_job_submitted_twice_fails() -> None:
    verdict = judge(facts(submissions=[archive(), archive()]))
    assert "job 1 was submitted 2 times" in verdict.failures


def test_an_archive_that_differs_from_its_round_fails() -> None:
    verdict = judge(facts(jobs=[job(uids=("a", "b", "c"))]))
    assert any("lacks 1 and adds 0" in f for f in verdict.failures)


def test_two_jobs_for_one_round_fail() -> None:
    verdict = judge(facts(jobs=[job(1), job(2)], submissions=[archive(1), archive(2, ())]))
    assert any("has 2 jobs" in f for f in verdict.failures)


def test_a_job_left_in_a_middle_state_is_stuck() -> None:
    verdict = judge(facts(jobs=[job(state="submitted")]))
    assert any("stuck in 'submitted'" in f for f in verdict.failures)


def test_only_the_ambiguous_submit_failure_is_tolerated() -> None:
    ambiguous = job(state="failed", last_error=AMBIGUOUS + " but ...")
    verdict = judge(facts(jobs=[ambiguous], destinations={"A": Counter(), "B": Counter()}))
    assert verdict.passed, verdict.failures
    assert sum(verdict.tolerated.values()) == 1
    other = job(state="failed", last_error="interrupted while being submitted")
    assert not judge(facts(jobs=[other], destinations={"A": Counter(), "B": Counter()})).passed


def test_an_ambiguous_job_the_server_never_got_leaves_its_instances_tolerated() -> None:
    ambiguous = job(state="failed", last_error=AMBIGUOUS)
    verdict = judge(
        facts(jobs=[ambiguous], submissions=[], destinations={"A": Counter(), "B": Counter()})
    )
    assert verdict.passed, verdict.failures
    assert verdict.tolerated["instance in no archive: its job failed ambiguously"] == 2


def test_a_resent_instance_in_two_rounds_is_tolerated_but_one_sent_once_is_not() -> None:
    rounds = [RoundRow(1, SERIES, 1, "matched"), RoundRow(2, SERIES, 2, "matched")]
    jobs = [job(1, 1, ("a", "b")), job(2, 2, ("b",))]
    archives = [archive(1, ("a", "b")), archive(2, ("b",))]
    both = {"A": Counter({"p1": 1, "p2": 1}), "B": Counter({"p1": 1, "p2": 1})}
    resent = [SentInstance("a", SERIES, 1, True), SentInstance("b", SERIES, 2, True)]
    verdict = judge(facts(instances=resent, jobs=jobs, submissions=archives, rounds=rounds,
                          destinations=both))  # fmt: skip
    assert verdict.passed, verdict.failures
    once = [SentInstance("a", SERIES, 1, True), SentInstance("b", SERIES, 1, True)]
    verdict = judge(facts(instances=once, jobs=jobs, submissions=archives, rounds=rounds,
                          destinations=both))  # fmt: skip
    assert any("is in 2 accepted archives" in f for f in verdict.failures)


def test_a_prediction_missing_at_one_destination_fails_and_copies_are_only_counted() -> None:
    verdict = judge(facts(destinations={"A": Counter({"p1": 3}), "B": Counter()}))
    assert verdict.failures == ["B lacks 1 of the 1 prediction(s) of job 1"]
    assert verdict.figures["duplicates_per_destination"] == {"A": 2, "B": 0}


def test_a_file_of_no_delivered_job_at_a_destination_fails() -> None:
    verdict = judge(facts(destinations={"A": Counter({"p1": 1, "x": 1}), "B": Counter({"p1": 1})}))
    assert verdict.failures == ["A holds 1 file(s) of no delivered job"]


def test_a_round_left_receiving_and_an_unrouted_series_fail() -> None:
    verdict = judge(facts(rounds=[RoundRow(1, SERIES, 1, "receiving")]))
    assert any("is 'receiving'" in f for f in verdict.failures)
    assert any("no round of it was matched" in f for f in verdict.failures)


def test_a_delivered_jobs_task_left_on_the_server_fails_an_ambiguous_ones_is_counted() -> None:
    verdict = judge(facts(submissions=[archive(deleted=False)]))
    assert verdict.failures == ["the task of delivered job 1 was left on the server"]
    ambiguous = job(state="failed", last_error=AMBIGUOUS)
    verdict = judge(facts(jobs=[ambiguous], submissions=[archive(deleted=False)],
                          destinations={"A": Counter(), "B": Counter()}))  # fmt: skip
    assert verdict.passed, verdict.failures
    assert verdict.tolerated["task left on the server: its job failed ambiguously"] == 1


def test_the_job_id_is_read_from_the_archive_name() -> None:
    assert job_id_of("isdr-job-12.zip") == 12
    assert job_id_of("isdr-job-7.tar") == 7
    assert job_id_of("upload.zip") == 0
