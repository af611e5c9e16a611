"""What the crash loop checks once everything has settled: pure functions of the facts.

The facts come from three places that do not depend on each other: what the sender saw
(storescu's Success per instance), what the stand-in InferenceServer received (each
accepted archive and the predictions it served), and what reached the destinations (the
SOP Instance UIDs in each storescp folder); the relay's database says what it made of it
all (series rounds, jobs and their states). `judge` turns them into failures, tolerated
outcomes and figures.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

# The one non-delivered outcome a kill may leave: the whole archive was sent but the
# server's answer never recorded. The relay cannot ask the server, so it fails the job.
AMBIGUOUS = "the relay stopped after the whole archive was sent"
TERMINAL = ("delivered", "failed")
ARCHIVE_NAME = re.compile(r"isdr-job-(\d+)\.(?:zip|tar)$")


@dataclass(frozen=True)
class SentInstance:
    """One instance the harness sent: how often it went on the wire, and whether it got
    Success at least once."""

    sop_uid: str
    series_uid: str
    sends: int
    success: bool


@dataclass(frozen=True)
class Submission:
    """One archive the stand-in accepted (it answered with a task uid)."""

    job_id: int  # from the archive's name isdr-job-<id>; 0 if the name says nothing
    task_uid: str
    instance_uids: frozenset[str]
    prediction_uids: tuple[str, ...]  # the DICOM output of its task; () if never served
    deleted: bool = False  # the relay deleted the task on the server


@dataclass(frozen=True)
class JobRow:
    """One job in the relay's database, with its series round and that round's instances."""

    id: int
    series_id: int
    series_uid: str
    round: int
    fingerprint: str
    state: str
    last_error: str
    task_uid: str
    instance_uids: frozenset[str]

    @property
    def ambiguous(self) -> bool:
        return self.state == "failed" and AMBIGUOUS in self.last_error


@dataclass(frozen=True)
class RoundRow:
    """One series round in the relay's database."""

    id: int
    series_uid: str
    round: int
    state: str


@dataclass(frozen=True)
class Facts:
    """Everything the checks look at."""

    instances: list[SentInstance]
    submissions: list[Submission]
    jobs: list[JobRow]
    rounds: list[RoundRow]
    destinations: dict[str, Counter[str]]  # destination -> SOP Instance UID -> copies
    log_errors: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """Failed checks, tolerated outcomes (counted), and figures."""

    failures: list[str] = field(default_factory=list)
    tolerated: Counter[str] = field(default_factory=Counter)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def job_id_of(archive_name: str) -> int:
    """The job id in an archive's name (isdr-job-12.zip -> 12), or 0."""
    found = ARCHIVE_NAME.search(archive_name)
    return int(found.group(1)) if found else 0


def judge(facts: Facts) -> Verdict:
    """Every check, in the order a person would read them."""
    verdict = Verdict()
    check_jobs(facts, verdict)
    check_rounds(facts, verdict)
    check_submissions(facts, verdict)
    check_instances(facts, verdict)
    check_destinations(facts, verdict)
    check_remote_tasks(facts, verdict)
    for line in facts.log_errors:
        verdict.failures.append(f"the relay logged an error: {line}")
    verdict.figures.update(figures(facts))
    return verdict


def check_jobs(facts: Facts, verdict: Verdict) -> None:
    """Every job ended (delivered, or failed with the one tolerated reason); one job per
    series round and fingerprint."""
    for job in facts.jobs:
        if job.state not in TERMINAL:
            verdict.failures.append(f"job {job.id} is stuck in '{job.state}' ({job.last_error})")
        elif job.ambiguous:
            verdict.tolerated["job failed: whole archive sent, answer not recorded"] += 1
        elif job.state == "failed":
            verdict.failures.append(f"job {job.id} failed: {job.last_error}")
    per_round = Counter((job.series_id, job.fingerprint) for job in facts.jobs)
    for (series_id, fingerprint), count in per_round.items():
        if count > 1:
            verdict.failures.append(
                f"series round {series_id} has {count} jobs for fingerprint {fingerprint}"
            )


def check_rounds(facts: Facts, verdict: Verdict) -> None:
    """Every series sent was received and routed; no round was left open or unmatched."""
    routed = {r.series_uid for r in facts.rounds if r.state == "matched"}
    for row in facts.rounds:
        if row.state != "matched":
            verdict.failures.append(
                f"series round {row.id} ({row.series_uid} round {row.round}) is '{row.state}'"
            )
    for uid in sorted({i.series_uid for i in facts.instances} - routed):
        verdict.failures.append(f"series {uid} was sent but no round of it was matched")


def check_submissions(facts: Facts, verdict: Verdict) -> None:
    """One accepted archive per job, holding exactly its round's instances; a delivered
    job's task is the one the stand-in made of it."""
    jobs = {job.id: job for job in facts.jobs}
    by_job: dict[int, list[Submission]] = {}
    for submission in facts.submissions:
        by_job.setdefault(submission.job_id, []).append(submission)
    for job_id, submissions in sorted(by_job.items()):
        job = jobs.get(job_id)
        if job is None:
            verdict.failures.append(f"the stand-in holds an archive of unknown job {job_id}")
            continue
        if len(submissions) > 1:
            verdict.failures.append(f"job {job_id} was submitted {len(submissions)} times")
        for submission in submissions:
            _compare_archive(job, submission, verdict)
    for job in facts.jobs:
        if job.state == "delivered" and _task_of(by_job, job.id) != job.task_uid:
            verdict.failures.append(
                f"job {job.id} is delivered with task {job.task_uid!r}, which the stand-in "
                "did not make from its archive"
            )


def _task_of(by_job: dict[int, list[Submission]], job_id: int) -> str:
    submissions = by_job.get(job_id, [])
    return submissions[0].task_uid if len(submissions) == 1 else ""


def _compare_archive(job: JobRow, submission: Submission, verdict: Verdict) -> None:
    missing = job.instance_uids - submission.instance_uids
    extra = submission.instance_uids - job.instance_uids
    if missing or extra:
        verdict.failures.append(
            f"the archive of job {job.id} lacks {len(missing)} and adds {len(extra)} "
            f"instance(s) compared with its round ({len(job.instance_uids)} recorded)"
        )


def check_instances(facts: Facts, verdict: Verdict) -> None:
    """Each instance that got Success is in exactly one accepted archive.

    Two tolerated exceptions, counted: an instance the relay stored but could not answer
    before a kill, resent, and taken into the next round after its first round was already
    routed (two rounds, two archives: the documented late-instance behaviour); and an
    instance whose only round's job failed ambiguously while the server never got it.
    """
    containing = _archives_by_instance(facts.submissions)
    jobs_by_instance = _jobs_by_instance(facts.jobs)
    for sent in facts.instances:
        if not sent.success:
            verdict.failures.append(f"instance {sent.sop_uid} never got Success")
            continue
        archives = containing.get(sent.sop_uid, [])
        jobs = jobs_by_instance.get(sent.sop_uid, [])
        problem = _instance_problem(sent, archives, jobs, verdict)
        if problem:
            rounds = ", ".join(f"job {j.id} (round {j.round}, {j.state})" for j in jobs) or "none"
            verdict.failures.append(
                f"instance {sent.sop_uid} of series {sent.series_uid} {problem}; "
                f"sent {sent.sends} time(s); its jobs: {rounds}"
            )


def _instance_problem(
    sent: SentInstance, archives: list[Submission], jobs: list[JobRow], verdict: Verdict
) -> str:
    if len(archives) == 1:
        return ""
    if not archives and jobs and all(job.ambiguous for job in jobs):
        verdict.tolerated["instance in no archive: its job failed ambiguously"] += 1
        return ""
    if not archives:
        return "got Success but is in no accepted archive"
    distinct_rounds = len({job.series_id for job in jobs}) == len(jobs) == len(archives) == 2
    if sent.sends > 1 and distinct_rounds:
        verdict.tolerated["instance resent after a kill, in two rounds"] += 1
        return ""
    return f"is in {len(archives)} accepted archives"


def _archives_by_instance(submissions: Iterable[Submission]) -> dict[str, list[Submission]]:
    found: dict[str, list[Submission]] = {}
    for submission in submissions:
        for uid in submission.instance_uids:
            found.setdefault(uid, []).append(submission)
    return found


def _jobs_by_instance(jobs: Iterable[JobRow]) -> dict[str, list[JobRow]]:
    found: dict[str, list[JobRow]] = {}
    for job in jobs:
        for uid in job.instance_uids:
            found.setdefault(uid, []).append(job)
    return found


def check_destinations(facts: Facts, verdict: Verdict) -> None:
    """Every prediction of every delivered job is at every destination, and nothing else
    is. Copies of one prediction (resent after a kill between the destination's answer
    and the relay's record) are counted, not failed."""
    tasks = {s.task_uid: s for s in facts.submissions}
    expected: set[str] = set()
    for job in facts.jobs:
        if job.state != "delivered":
            continue
        submission = tasks.get(job.task_uid)
        predictions = set(submission.prediction_uids) if submission else set()
        if not predictions:
            verdict.failures.append(f"job {job.id} is delivered but its task served no output")
        expected |= predictions
        for name, received in facts.destinations.items():
            missing = predictions - set(received)
            if missing:
                verdict.failures.append(
                    f"{name} lacks {len(missing)} of the {len(predictions)} prediction(s) "
                    f"of job {job.id}"
                )
    for name, received in facts.destinations.items():
        stray = set(received) - expected
        if stray:
            verdict.failures.append(f"{name} holds {len(stray)} file(s) of no delivered job")


def check_remote_tasks(facts: Facts, verdict: Verdict) -> None:
    """The task of every delivered job was deleted on the server (the relay asks for it,
    with retries that survive restarts); a task the relay cannot know (its job failed
    ambiguously) stays, counted."""
    delivered = {job.task_uid for job in facts.jobs if job.state == "delivered"}
    for submission in facts.submissions:
        if submission.deleted:
            continue
        if submission.task_uid in delivered:
            verdict.failures.append(
                f"the task of delivered job {submission.job_id} was left on the server"
            )
        else:
            verdict.tolerated["task left on the server: its job failed ambiguously"] += 1


def figures(facts: Facts) -> dict[str, object]:
    """The counts a person reads after a run."""
    failed = Counter(job.last_error for job in facts.jobs if job.state == "failed")
    return {
        "instances_unique": len(facts.instances),
        "instances_sends": sum(i.sends for i in facts.instances),
        "instances_resent": sum(1 for i in facts.instances if i.sends > 1),
        "instances_success": sum(1 for i in facts.instances if i.success),
        "series": len({i.series_uid for i in facts.instances}),
        "series_rounds": len(facts.rounds),
        "jobs": len(facts.jobs),
        "jobs_by_state": dict(Counter(job.state for job in facts.jobs)),
        "jobs_failed_by_reason": dict(failed),
        "submissions": len(facts.submissions),
        "tasks_left_on_server": sum(1 for s in facts.submissions if not s.deleted),
        "predictions_per_destination": {
            name: len(received) for name, received in facts.destinations.items()
        },
        "duplicates_per_destination": {
            name: sum(count - 1 for count in received.values())
            for name, received in facts.destinations.items()
        },
    }
