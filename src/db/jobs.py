"""The job queue: creating jobs and moving them between states.

Each function is one short transaction. Every state change adds a line to the job's
timeline and one log line with the job id.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Engine, and_, or_, select, type_coerce, update
from sqlalchemy.orm import Session, aliased, selectinload

from isdr.db.models import Instance, InvalidSnapshot, Job, JobEvent, Series, SeriesDecision
from isdr.db.series import SEVERAL
from isdr.db.views import EventView, InstanceView, JobView, job_view, view_of
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.senders import Sent
from isdr.domain.states import JobState, SeriesState, Step
from isdr.domain.submit import RetryDecision, SubmitCounts, SubmitFailure

logger = logging.getLogger(__name__)


def new_job(series_id: int, name: str, snapshot: Fingerprint, now: datetime) -> Job:
    return Job(
        series_id=series_id,
        fingerprint_name=name,
        fingerprint=snapshot,
        state=JobState.PENDING,
        attempts=0,
        next_attempt_at=now,
        last_error="",
        task_uid="",
        created_at=now,
        updated_at=now,
    )


def change_state(session: Session, job: Job, state: JobState, message: str, now: datetime) -> None:
    """Move a job (in an open transaction), with a timeline line and a log line."""
    if state != JobState.WAITING:
        job.waiting_for = None  # a reason is the waiting state's alone
    job.state = state
    job.updated_at = now
    session.add(JobEvent(job_id=job.id, at=now, state=state, message=message))
    if state in (JobState.DELIVERED, JobState.FAILED):
        _log_end(job, message)
    else:
        logger.info("job %d %s: %s", job.id, state, message)


def _log_end(job: Job, message: str) -> None:
    """The one line that ends a job: INFO when delivered, WARNING otherwise (alerting on
    WARNING catches every job that did not deliver), with the model and the server."""
    where = _model_and_server(job)
    orphans = job.ambiguous_submits or 0
    if job.state == JobState.DELIVERED and not orphans:
        logger.info("job %d delivered (%s): %s", job.id, where, message)
        return
    step = f" at {job.failed_step}" if job.state == JobState.FAILED and job.failed_step else ""
    extra = (
        f"; {orphans} earlier submit(s) may have left a task on the server (isdr jobs show)"
        if orphans
        else ""
    )
    logger.warning("job %d %s%s (%s): %s%s", job.id, job.state, step, where, message, extra)


def _model_and_server(job: Job) -> str:
    try:
        fingerprint = job.fingerprint
    except InvalidSnapshot:
        return "its fingerprint copy is not valid"
    server = job.server_name or fingerprint.server_label
    return f"model {fingerprint.model_human_readable_id} on {server}"


@dataclass(frozen=True)
class DueSubmit:
    """A job due for a submit, with what choosing its server needs."""

    job_id: int
    url: str  # its server's URL as its fingerprint copy names it; "": a pool serves it
    model: str
    servers: tuple[str, ...] | None  # the pool's narrowing (`inference_servers`)
    study_instance_uid: str
    last_server: str  # the member its last submit went to ("" if none)
    waiting_for: str | None = None  # why it waits, when it does


def due_submits(
    engine: Engine, now: datetime, exclude: Collection[int] = (), limit: int = 500
) -> list[DueSubmit]:
    """Pending jobs whose next attempt is due, then waiting ones (each kind up to `limit`,
    so that a full pool's backlog never hides the others' jobs), but those in `exclude`,
    the longest due first."""
    raw = type_coerce(Job.fingerprint, JSON)
    kinds = (and_(Job.state == JobState.PENDING, Job.next_attempt_at <= now),
             Job.state == JobState.WAITING)  # fmt: skip
    columns = (Job.id, raw, Series.study_instance_uid, Job.server_name, Job.state, Job.waiting_for)
    rows: list[Any] = []
    with Session(engine) as session:
        for due in kinds:
            rows += session.execute(
                select(*columns)
                .join(Series, Series.id == Job.series_id)
                .where(due, Job.id.not_in(list(exclude)))
                .order_by(Job.next_attempt_at, Job.id)
                .limit(limit)
            ).all()
    return [_due(*row) for row in rows]


def _due(
    job_id: int, copy: object, study: str, last: str | None, state: str, waiting: str | None
) -> DueSubmit:
    data = copy if isinstance(copy, dict) else {}
    keys = ("inference_server_url", "model_human_readable_id", "inference_servers")
    url, model, names = (data.get(key) for key in keys)
    return DueSubmit(
        job_id,
        url if isinstance(url, str) else "",
        model if isinstance(model, str) else "",
        tuple(str(name) for name in names) if isinstance(names, list) else None,
        study,
        last or "",
        waiting if state == JobState.WAITING else None,
    )


@dataclass(frozen=True)
class JobSeries:
    """One series round of a job: its instances, and the trigger it met ("" if none)."""

    series_id: int
    series_instance_uid: str
    trigger: str
    instances: list[InstanceView]


@dataclass(frozen=True)
class JobInput:
    """What submitting a job needs."""

    job_id: int
    fingerprint: Fingerprint
    series: list[JobSeries]

    @property
    def instances(self) -> list[InstanceView]:
        """Every instance of every series of the job."""
        return [instance for series in self.series for instance in series.instances]


def job_input(engine: Engine, job_id: int) -> JobInput:
    """The job's fingerprint snapshot and the instances of its series rounds: those each
    round held when the job was made (a job made before jobs held several rounds: its
    one round, whole)."""
    with Session(engine) as session:
        job = session.get_one(Job, job_id)
        members = session.execute(
            select(
                SeriesDecision.series_id, SeriesDecision.trigger, SeriesDecision.last_instance_id
            )
            .where(SeriesDecision.job_id == job_id)
            .order_by(SeriesDecision.series_id)
        ).all()
        rounds = [(row[0], row[1], row[2]) for row in members] or [(job.series_id, "", None)]
        series = [_job_series(session, *member) for member in rounds]
        return JobInput(job.id, job.fingerprint, series)


def _job_series(session: Session, series_id: int, trigger: str, last: int | None) -> JobSeries:
    query = select(Instance).where(Instance.series_id == series_id)
    if last is not None:
        query = query.where(Instance.id <= last)
    instances = [view_of(InstanceView, row) for row in session.scalars(query.order_by(Instance.id))]
    uid = session.get_one(Series, series_id).series_instance_uid
    return JobSeries(series_id, uid, trigger, instances)


def move(
    engine: Engine,
    job_id: int,
    state: JobState,
    message: str,
    now: datetime,
    *,
    source: frozenset[JobState],
    **changes: Any,
) -> bool:
    """Move a job from one of the `source` states to `state`, with a timeline and log line.

    Returns False (and changes nothing) when the job is in another state: it was moved
    meanwhile, by another step or another relay on the same database.
    """
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.state not in source:
            return False
        for key, value in changes.items():
            setattr(job, key, value)
        change_state(session, job, state, message, now)
        return True


PENDING = frozenset({JobState.PENDING, JobState.WAITING})  # what a submit may take
IN_HAND = frozenset({JobState.PENDING, JobState.WAITING, JobState.SUBMITTING})
SUBMITTING = frozenset({JobState.SUBMITTING})


def retry_later(
    engine: Engine,
    job_id: int,
    failure: SubmitFailure,
    now: datetime,
    decide: Callable[[SubmitCounts, SubmitFailure], RetryDecision],
) -> None:
    """Count a failed submit: try again when `decide` says, or fail with its reason."""
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.state not in IN_HAND:
            return
        job.attempts += 1
        job.suspect_answers = (job.suspect_answers or 0) + 1 if failure.suspect_model else 0
        job.ambiguous_submits = (job.ambiguous_submits or 0) + failure.maybe_held
        job.last_error = failure.reason
        decision = decide(
            SubmitCounts(job.attempts, job.suspect_answers, job.ambiguous_submits), failure
        )
        if decision.wait is None:
            job.failed_step, job.last_error = Step.SUBMIT, decision.message
            change_state(session, job, JobState.FAILED, decision.message, now)
            return
        job.next_attempt_at = now + timedelta(seconds=decision.wait)
        change_state(session, job, JobState.PENDING, decision.message, now)


@dataclass(frozen=True)
class Interrupted:
    """A submit a stop cut short, and what became of it."""

    job_id: int
    failed: str  # why it failed instead of being sent again; "" when sent again


UNSENT_MESSAGE = (
    "the relay stopped while sending the archive, before its last bytes: the server cannot "
    "have it, so it is sent again"
)
AMBIGUOUS_MESSAGE = (
    "the relay stopped after the whole archive was sent but before the server's answer was "
    "recorded; the server may hold the task, so it is not sent again automatically "
    "(isdr jobs retry sends it again)"
)


def interrupted_submits(engine: Engine, now: datetime, max_attempts: int) -> list[Interrupted]:
    """Settle the jobs a stop caught on the wire; none is ever sent twice on its own.

    A job whose last bytes had not gone is sent again (an attempt counted, so a relay
    killed during every upload gives up after `max_attempts`): a server only creates a
    task from a whole request. One whose whole archive had gone fails with the reason.
    """
    with Session(engine) as session, session.begin():
        jobs = session.scalars(select(Job).where(Job.state == JobState.SUBMITTING)).all()
        for job in jobs:
            _settle_interrupted(session, job, now, max_attempts)
        return [
            Interrupted(job.id, "" if job.state == JobState.PENDING else job.last_error)
            for job in jobs
        ]


def _settle_interrupted(session: Session, job: Job, now: datetime, max_attempts: int) -> None:
    if job.archive_sent_at is not None:
        job.last_error = AMBIGUOUS_MESSAGE
        job.ambiguous_submits = (job.ambiguous_submits or 0) + 1
    else:
        job.attempts += 1
        if job.attempts < max_attempts:
            job.next_attempt_at = now
            change_state(session, job, JobState.PENDING, UNSENT_MESSAGE, now)
            return
        job.last_error = f"the relay stopped while sending this job {job.attempts} times: given up"
    job.failed_step = Step.SUBMIT
    change_state(session, job, JobState.FAILED, job.last_error, now)


def mark_archive_sent(engine: Engine, job_id: int, now: datetime) -> None:
    """Record that every byte of the job's submit but the last few is on its way."""
    with Session(engine) as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.SUBMITTING)
            .values(archive_sent_at=now)
        )


def series_ready_for_removal(
    engine: Engine, limit: int = 50, *, delete_on_post: bool = True
) -> list[int]:
    """Series rounds whose files can go: those a person had deleted (`discarded`) and,
    with DELETE_ON_POST, unmatched ones and matched ones with every job submitted.

    A job that failed at its submit keeps them, so that `isdr jobs retry` can send it.
    """
    unsent = or_(
        Job.state.in_((JobState.PENDING, JobState.WAITING, JobState.SUBMITTING)),
        and_(
            Job.state == JobState.FAILED,
            or_(Job.failed_step.is_(None), Job.failed_step == Step.SUBMIT),
        ),
    )
    held_by_job = or_(
        Job.series_id == Series.id,
        Job.id.in_(select(SeriesDecision.job_id).where(SeriesDecision.series_id == Series.id)),
    )
    unfinished = select(Job.id).where(held_by_job, unsent).exists()
    # A discarded round a job still needs (it held the round before it went held) waits.
    removable = [and_(Series.state == SeriesState.DISCARDED, ~unfinished)]
    if delete_on_post:
        removable += [
            Series.state.in_((SeriesState.UNMATCHED, SeriesState.INCOMPLETE)),
            and_(Series.state == SeriesState.MATCHED, ~unfinished),
        ]
    with Session(engine) as session:
        return list(
            session.scalars(
                select(Series.id)
                .where(
                    Series.files_removed_at.is_(None),
                    or_(*removable),
                )
                .limit(limit)
            )
        )


def removable_paths(engine: Engine, series_id: int) -> list[str]:
    """The round's files, relative to INCOMING_DIR, except those a later round still uses.

    A series sent again after its round was taken lands in the same folder and file names.
    """
    other = aliased(Instance)
    still_used = (
        select(other.id)
        .join(Series, Series.id == other.series_id)
        .where(
            other.path == Instance.path,
            other.series_id != series_id,
            Series.files_removed_at.is_(None),
        )
        .exists()
    )
    with Session(engine) as session:
        return list(
            session.scalars(
                select(Instance.path).where(Instance.series_id == series_id, ~still_used)
            )
        )


def mark_files_removed(engine: Engine, series_id: int, now: datetime) -> None:
    """Remember that a round's files are gone."""
    with Session(engine) as session, session.begin():
        session.get_one(Series, series_id).files_removed_at = now


def list_jobs(
    engine: Engine,
    limit: int = 200,
    offset: int = 0,
    state: str | None = None,
    *,
    model: str | None = None,
    server: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[JobView]:
    """The newest jobs first; only those in `state`, for `model` (its id), on `server` (its
    URL, as the job's fingerprint copy names it), created from `since` and before `until`,
    when given."""
    copy = type_coerce(Job.fingerprint, JSON)
    query = select(Job).options(selectinload(Job.members)).order_by(Job.id.desc())
    conditions = [
        Job.state == state if state is not None else None,
        copy["model_human_readable_id"].as_string() == model if model is not None else None,
        or_(copy["inference_server_url"].as_string() == server, Job.server_name == server)
        if server is not None
        else None,
        Job.created_at >= since if since is not None else None,
        Job.created_at < until if until is not None else None,
    ]
    query = query.where(*[condition for condition in conditions if condition is not None])
    with Session(engine) as session:
        rows = session.scalars(query.limit(limit).offset(offset))
        return [job_view(row) for row in rows]


@dataclass(frozen=True)
class RecentEvent:
    """One line of some job's timeline."""

    job_id: int
    at: datetime
    state: str
    message: str


def recent_events(engine: Engine, limit: int = 100) -> list[RecentEvent]:
    """The newest lines of every job's timeline, newest first."""
    with Session(engine) as session:
        rows = session.execute(
            select(JobEvent.job_id, JobEvent.at, JobEvent.state, JobEvent.message)
            .order_by(JobEvent.id.desc())
            .limit(limit)
        )
        return [RecentEvent(*row) for row in rows]


def timeline(engine: Engine, job_id: int) -> tuple[JobView, list[EventView]] | None:
    """A job and every line of its timeline, oldest first; None if there is no such job."""
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        return job_view(job), [view_of(EventView, event) for event in job.events]


def jobs_of_series(engine: Engine, series_id: int) -> list[JobView]:
    """Every job that holds a series round, the newest first."""
    holding = select(SeriesDecision.job_id).where(SeriesDecision.series_id == series_id)
    query = (
        select(Job)
        .options(selectinload(Job.members))
        .where(or_(Job.series_id == series_id, Job.id.in_(holding)))
        .order_by(Job.id.desc())
    )
    with Session(engine) as session:
        return [job_view(row) for row in session.scalars(query)]


def job_senders(engine: Engine, job_id: int) -> list[Sent]:
    """Who sent the series rounds a job holds, in the order of the rounds: each one's
    calling AE title and the address its association came from ("" for placed files)."""
    with Session(engine) as session:
        job = session.get_one(Job, job_id)
        rows = session.execute(
            select(Series.calling_ae_title, Series.peer_address)
            .where(Series.id.in_(job.series_ids))
            .order_by(Series.id)
        )
        return [Sent((title or "").strip(), _address(peer or "")) for title, peer in rows]


def _address(peer: str) -> str:
    """The address of `host:port` as the Store SCP records it (IPv6 included); "*" for a
    round several senders sent; "" for anything else (placed files: "inbox", "storescp")."""
    if peer == SEVERAL:
        return SEVERAL
    host = peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return ""
    return host
