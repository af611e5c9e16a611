"""The queue after the submit: polled jobs, their outputs, and one delivery per destination.

Each function is one short transaction. A job's timeline gets a line for each state
change and for each failed delivery attempt, so `isdr jobs show` tells the whole story.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from isdr.db.jobs import change_state, move
from isdr.db.models import DeidMap, DeliveredFile, Delivery, Job, JobEvent, OutputFile
from isdr.domain.destination import AE_TITLE_MAX, Destination, DestinationTls
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.output import OutputRecord
from isdr.domain.senders import SenderRefused, Sent
from isdr.domain.servers import Server
from isdr.domain.states import DeliveryState, JobState, Step

logger = logging.getLogger(__name__)

SUBMITTED = frozenset({JobState.SUBMITTED})
DELIVERING = frozenset({JobState.DELIVERING})


@dataclass(frozen=True)
class PolledJob:
    """What polling a job needs."""

    job_id: int
    task_uid: str
    fingerprint: Fingerprint
    submitted_at: datetime
    poll_errors: int = 0  # unexpected errors so far (see add_poll_error)
    server: Server | None = None  # the pool member that holds it (None: the fingerprint's URL)


def polled_jobs(engine: Engine) -> list[PolledJob]:
    """Every job the InferenceServers hold: state submitted."""
    with Session(engine) as session:
        rows = session.execute(
            select(
                Job.id, Job.task_uid, Job.fingerprint, Job.submitted_at, Job.updated_at,
                Job.poll_errors, Job.server_copy,
            ).where(Job.state == JobState.SUBMITTED)
        ).all()  # fmt: skip
        return [PolledJob(r[0], r[1], r[2], r[3] or r[4], r[5] or 0, r[6]) for r in rows]


def add_poll_error(engine: Engine, job_id: int, message: str, now: datetime) -> int:
    """Count an unexpected error on a submitted job, with a timeline line; the count so far
    (0: the job is no longer submitted, nothing counted)."""
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.state != JobState.SUBMITTED:
            return 0
        job.poll_errors = (job.poll_errors or 0) + 1
        session.add(JobEvent(job_id=job_id, at=now, state=job.state, message=message))
        return job.poll_errors


def fail(
    engine: Engine, job_id: int, step: Step, reason: str, now: datetime,
    *, delete_remotely: bool = False,
) -> bool:  # fmt: skip
    """Fail a job that is submitted or delivering, at `step` (and, in the same
    transaction, have its remote task deleted)."""
    due = _delete_due(now) if delete_remotely else {}
    return move(
        engine, job_id, JobState.FAILED, reason, now,
        source=SUBMITTED | DELIVERING, last_error=reason, failed_step=step, **due,
    )  # fmt: skip


def _delete_due(now: datetime) -> dict[str, Any]:
    return {"remote_delete_due_at": now, "remote_delete_attempts": 0}


def record_output(
    engine: Engine,
    job_id: int,
    output_dir: str,
    files: Sequence[OutputRecord],
    destinations: Sequence[Destination],
    note: str,
    now: datetime,
    senders: Sequence[Sent] = (),
) -> bool:
    """The output is unpacked: record its files, open one delivery per destination, and
    one per sender to send back to (found in SENDERS_FILE by the deliverer).

    A destination that already confirmed everything in an earlier round (a retry after
    its folder was removed) keeps its state; the others start over.
    """
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.state != JobState.SUBMITTED:
            return False
        session.execute(delete(OutputFile).where(OutputFile.job_id == job_id))
        session.add_all(OutputFile(job_id=job_id, **vars(f)) for f in files)
        _open_deliveries(session, job_id, [*destinations, *dict.fromkeys(senders)], now)
        job.output_dir, job.outputs_note, job.files_removed_at = output_dir, note, None
        change_state(session, job, JobState.DELIVERING, note, now)
        return True


def _open_deliveries(
    session: Session, job_id: int, destinations: Sequence[Destination | Sent], now: datetime
) -> None:
    existing = {
        d.position: d for d in session.scalars(select(Delivery).where(Delivery.job_id == job_id))
    }
    for position, where in enumerate(destinations):
        fresh = _delivery(job_id, position, where, now)
        delivery = existing.get(position)
        if delivery is None:
            session.add(fresh)
        elif _place(delivery) != _place(fresh):  # another destination than last time
            for name in ("host", "port", "ae_title", "tls", "sender_ae", "sender_address"):
                setattr(delivery, name, getattr(fresh, name))
            delivery.state, delivery.attempts, delivery.next_attempt_at = fresh.state, 0, now
            delivery.last_error = ""
            _forget_confirmed(session, delivery.id)  # what the other one confirmed
        elif delivery.state != DeliveryState.DELIVERED:
            delivery.state, delivery.attempts = DeliveryState.PENDING, 0
            delivery.next_attempt_at = now
            if delivery.sender_ae is not None:  # looked up again (sender_found compares)
                delivery.port = 0


def _delivery(job_id: int, position: int, where: Destination | Sent, now: datetime) -> Delivery:
    row = Delivery(job_id=job_id, position=position, state=DeliveryState.PENDING, attempts=0,
                   next_attempt_at=now, last_error="", updated_at=now)  # fmt: skip
    if isinstance(where, Sent):
        row.host, row.port, row.ae_title, row.tls = "", 0, where.ae_title[:AE_TITLE_MAX], None
        row.sender_ae, row.sender_address = where.ae_title, where.address
    else:
        row.host, row.port, row.ae_title, row.tls = where.host, where.port, where.ae_title, None
        row.tls = _tls_json(where)
    return row


def _place(row: Delivery) -> tuple[object, ...]:
    if row.sender_ae is not None:
        return ("sender", row.sender_ae, row.sender_address)
    return (row.host, row.port, row.ae_title, row.tls)


@dataclass(frozen=True)
class SenderToFind:
    """A delivery to "the sender" whose destination is not yet known."""

    delivery_id: int
    job_id: int
    sent: Sent


def senders_to_find(engine: Engine) -> list[SenderToFind]:
    """Pending deliveries to a sender that the deliverer has not looked up yet."""
    with Session(engine) as session:
        rows = session.execute(
            select(Delivery.id, Delivery.job_id, Delivery.sender_ae, Delivery.sender_address)
            .join(Job, Job.id == Delivery.job_id)
            .where(
                Delivery.state == DeliveryState.PENDING,
                Delivery.sender_ae.is_not(None),
                Delivery.port == 0,
                Job.state == JobState.DELIVERING,
            )
        ).all()
        return [SenderToFind(row[0], row[1], Sent(row[2] or "", row[3] or "")) for row in rows]


def sender_found(
    engine: Engine, delivery_id: int, where: Destination | SenderRefused, now: datetime
) -> None:
    """Record where a sender is (then it is delivered as any destination), or why its
    predictions do not go back to it (the delivery fails at once, saying why)."""
    with Session(engine) as session, session.begin():
        row = session.get_one(Delivery, delivery_id, with_for_update=True)
        if row.state != DeliveryState.PENDING or row.port:
            return
        row.updated_at = now
        if isinstance(where, SenderRefused):
            row.state, row.last_error = DeliveryState.FAILED, where.reason
            _note(session, row.job_id, f"{row.destination}: {where.reason}", now, logging.WARNING)
            return
        if row.host and (row.host, row.ae_title) != (where.host, where.ae_title):
            _forget_confirmed(session, row.id)  # it is elsewhere now: all its files again
        row.host, row.port, row.ae_title = where.host, where.port, where.ae_title
        row.tls = _tls_json(where)
        _note(session, row.job_id, f"the sender {row.sender_ae} is {where}", now, logging.INFO)


def _forget_confirmed(session: Session, delivery_id: int) -> None:
    session.execute(delete(DeliveredFile).where(DeliveredFile.delivery_id == delivery_id))


def _note(session: Session, job_id: int, message: str, now: datetime, level: int) -> None:
    """A timeline line that is not a state change."""
    job = session.get_one(Job, job_id)
    session.add(JobEvent(job_id=job_id, at=now, state=job.state, message=message))
    logger.log(level, "job %d: %s", job_id, message)


@dataclass(frozen=True)
class DeliveryWork:
    """A delivery that is due, and the files it still has to send."""

    delivery_id: int
    job_id: int
    destination: Destination
    output_dir: str
    files: list[OutputRecord]


def due_deliveries(engine: Engine, now: datetime, limit: int = 50) -> list[tuple[int, Destination]]:
    """Pending deliveries whose next attempt is due, oldest first, with their destination."""
    with Session(engine) as session:
        rows = session.execute(
            select(Delivery.id, Delivery.host, Delivery.port, Delivery.ae_title)
            .join(Job, Job.id == Delivery.job_id)
            .where(
                Delivery.state == DeliveryState.PENDING,
                Delivery.next_attempt_at <= now,
                Delivery.port > 0,  # a sender not yet looked up waits for senders_to_find
                Job.state == JobState.DELIVERING,
            )
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
        ).all()
        return [(row[0], Destination.at(row[1], row[2], row[3])) for row in rows]


def claim_delivery(engine: Engine, delivery_id: int, now: datetime) -> DeliveryWork | None:
    """Move a pending delivery to sending; what it has to send, or None if taken."""
    with Session(engine) as session, session.begin():
        delivery = session.get_one(Delivery, delivery_id, with_for_update=True)
        if delivery.state != DeliveryState.PENDING:
            return None
        delivery.state, delivery.updated_at = DeliveryState.SENDING, now
        job = session.get_one(Job, delivery.job_id)
        sent = select(DeliveredFile.name).where(DeliveredFile.delivery_id == delivery_id)
        rows = session.scalars(
            select(OutputFile)
            .where(
                OutputFile.job_id == delivery.job_id,
                OutputFile.sop_class_uid != "",
                OutputFile.name.not_in(sent),
            )
            .order_by(OutputFile.name)
        ).all()
        files = [_record(row) for row in rows]
        where = _destination(delivery)
        return DeliveryWork(delivery.id, delivery.job_id, where, job.output_dir or "", files)


def _destination(row: Delivery) -> Destination:
    tls = None if row.tls is None else DestinationTls.model_validate(row.tls)
    return Destination.at(row.host, row.port, row.ae_title, tls)


def _tls_json(where: Destination) -> dict[str, Any] | None:
    """The TLS settings as the delivery row keeps them."""
    return None if where.tls is None else where.tls.model_dump(mode="json")


def _record(row: OutputFile) -> OutputRecord:
    return OutputRecord(
        row.name, row.size, row.sop_class_uid, row.sop_instance_uid, row.transfer_syntax_uid
    )


_CONFIRM = insert(DeliveredFile)


def confirm_file(engine: Engine, delivery_id: int, name: str, status: int, now: datetime) -> None:
    """The destination confirmed a file: it is never sent to it again by this job.

    One Core statement in its own transaction, once per file sent (a third of the cost of
    the ORM's unit of work, measured in bench/delivery_throughput.py).
    """
    row = {"delivery_id": delivery_id, "name": name, "status": status, "at": now}
    try:
        with engine.begin() as connection:
            connection.execute(_CONFIRM, row)
    except IntegrityError:
        pass  # confirmed twice (sent again after a crash): once is what counts


def delivery_done(engine: Engine, delivery_id: int, sent: int, now: datetime) -> None:
    """Every file confirmed by this destination."""
    with Session(engine) as session, session.begin():
        delivery = session.get_one(Delivery, delivery_id, with_for_update=True)
        delivery.state, delivery.updated_at = DeliveryState.DELIVERED, now
        delivery.last_error = ""
        total = _confirmed(session, delivery_id)
        _note(
            session,
            delivery.job_id,
            f"{delivery.destination} confirmed all {total} DICOM file(s) ({sent} this attempt, "
            f"attempt {delivery.attempts + 1})",
            now,
            logging.INFO,
        )


def _confirmed(session: Session, delivery_id: int) -> int:
    return len(
        session.scalars(
            select(DeliveredFile.id).where(DeliveredFile.delivery_id == delivery_id)
        ).all()
    )


def delivery_retry(
    engine: Engine,
    delivery_id: int,
    reason: str,
    now: datetime,
    delay: Callable[[int], float],
    limit: int,
) -> None:
    """Count a failed attempt at one destination: again after `delay(attempts)`, or give up."""
    with Session(engine) as session, session.begin():
        delivery = session.get_one(Delivery, delivery_id, with_for_update=True)
        delivery.attempts += 1
        delivery.last_error, delivery.updated_at = reason, now
        where = delivery.destination
        if delivery.attempts >= limit:
            delivery.state = DeliveryState.FAILED
            message = f"{where}: gave up after {delivery.attempts} attempts: {reason}"
            _note(session, delivery.job_id, message, now, logging.WARNING)
            return
        wait = delay(delivery.attempts)
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = now + timedelta(seconds=wait)
        message = f"{where}: attempt {delivery.attempts} failed ({reason}); next in {wait:g} s"
        _note(session, delivery.job_id, message, now, logging.WARNING)


def interrupted_deliveries(engine: Engine, now: datetime) -> int:
    """After a stop: deliveries caught sending go back to pending (no attempt counted).

    Files they had confirmed are recorded and not sent again; the one in flight is.
    """
    with Session(engine) as session, session.begin():
        result = session.execute(
            update(Delivery)
            .where(Delivery.state == DeliveryState.SENDING)
            .values(state=DeliveryState.PENDING, next_attempt_at=now)
        )
        return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class Finished:
    """A delivering job none of whose deliveries is still under way."""

    job_id: int
    task_uid: str
    fingerprint: Fingerprint
    output_dir: str
    failures: list[str]  # "AE@host:port: reason" of the deliveries that gave up
    sent: list[str]  # the DICOM files, relative to output_dir
    kept: list[str]  # the other files
    delivered_to: list[str] = field(default_factory=list)  # AE@host:port that confirmed all


def finished_jobs(engine: Engine, limit: int = 50) -> list[Finished]:
    """Delivering jobs whose deliveries have all ended, delivered or failed."""
    open_states = (DeliveryState.PENDING, DeliveryState.SENDING)
    with Session(engine) as session:
        busy = (
            select(Delivery.id)
            .where(Delivery.job_id == Job.id, Delivery.state.in_(open_states))
            .exists()
        )
        jobs = session.scalars(
            select(Job).where(Job.state == JobState.DELIVERING, ~busy).limit(limit)
        ).all()
        return [_finished(session, job) for job in jobs]


def _finished(session: Session, job: Job) -> Finished:
    deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job.id)).all()
    failures = [
        f"{d.destination}: {d.last_error}" for d in deliveries if d.state == DeliveryState.FAILED
    ]
    delivered_to = [d.destination for d in deliveries if d.state == DeliveryState.DELIVERED]
    files = session.scalars(select(OutputFile).where(OutputFile.job_id == job.id)).all()
    sent = sorted(f.name for f in files if f.sop_class_uid)
    kept = sorted(f.name for f in files if not f.sop_class_uid)
    return Finished(
        job.id, job.task_uid, job.fingerprint, job.output_dir or "", failures, sent, kept,
        delivered_to,
    )  # fmt: skip


def note(engine: Engine, job_id: int, message: str, now: datetime) -> None:
    """Add a line to a job's timeline (and the log) without changing its state."""
    with Session(engine) as session, session.begin():
        _note(session, job_id, message, now, logging.INFO)


def mark_delivered(
    engine: Engine, job_id: int, message: str, now: datetime, *, delete_remotely: bool = False
) -> bool:
    """The job is done: every destination confirmed every file (and its remote task is
    to be deleted, by the deliverer's finishing thread)."""
    due = _delete_due(now) if delete_remotely else {}
    return move(engine, job_id, JobState.DELIVERED, message, now, source=DELIVERING, **due)


@dataclass(frozen=True)
class RemoteDelete:
    """A job whose task on the server is to be deleted now."""

    job_id: int
    task_uid: str
    fingerprint: Fingerprint
    attempts: int  # made so far
    server: Server | None = None  # the pool member that held it


def due_remote_deletes(engine: Engine, now: datetime, limit: int = 50) -> list[RemoteDelete]:
    """Remote deletes whose time has come, oldest first."""
    with Session(engine) as session:
        rows = session.execute(
            select(
                Job.id, Job.task_uid, Job.fingerprint, Job.remote_delete_attempts, Job.server_copy
            )
            .where(
                Job.remote_delete_due_at <= now,
                Job.state.in_((JobState.DELIVERED, JobState.FAILED)),
            )
            .order_by(Job.remote_delete_due_at)
            .limit(limit)
        ).all()
        return [RemoteDelete(row[0], row[1], row[2], row[3] or 0, row[4]) for row in rows]


def remote_delete_done(
    engine: Engine, job_id: int, message: str, now: datetime, *, done: bool,
    retry_at: datetime | None,
) -> None:  # fmt: skip
    """Record an attempt at a remote delete in the timeline (a WARNING unless `done`);
    `retry_at` schedules another (None: nothing more to do)."""
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, job_id)
        job.remote_delete_attempts = (job.remote_delete_attempts or 0) + 1
        job.remote_delete_due_at = retry_at
        level = logging.INFO if done else logging.WARNING
        _note(session, job_id, message, now, level)


def mark_files_removed(engine: Engine, job_id: int, now: datetime) -> None:
    """The job's local files are gone, and its pseudonyms with them (de-identified jobs)."""
    with Session(engine) as session, session.begin():
        session.get_one(Job, job_id).files_removed_at = now
        session.execute(delete(DeidMap).where(DeidMap.job_id == job_id))


def expired_job_folders(engine: Engine, before: datetime, limit: int = 100) -> list[int]:
    """Failed or delivered jobs, last changed before `before`, whose files are still kept."""
    with Session(engine) as session:
        return list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.state.in_((JobState.FAILED, JobState.DELIVERED)),
                    Job.files_removed_at.is_(None),
                    Job.updated_at < before,
                )
                .limit(limit)
            )
        )


@dataclass(frozen=True)
class DeliveryView:
    """One delivery as `isdr jobs show` prints it."""

    destination: str
    state: str
    attempts: int
    confirmed: int
    last_error: str


@dataclass(frozen=True)
class OutputView:
    """A job's output files: sent and kept."""

    dicom: int
    kept: list[str]


def job_details(engine: Engine, job_id: int) -> tuple[list[DeliveryView], OutputView]:
    """A job's deliveries and outputs, for `isdr jobs show`."""
    with Session(engine) as session:
        deliveries = session.scalars(
            select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.position)
        ).all()
        views = [
            DeliveryView(
                d.destination, d.state, d.attempts, _confirmed(session, d.id), d.last_error
            )
            for d in deliveries
        ]
        files = session.scalars(select(OutputFile).where(OutputFile.job_id == job_id)).all()
        kept = sorted(f.name for f in files if not f.sop_class_uid)
        return views, OutputView(len(files) - len(kept), kept)


def retry_failed(engine: Engine, job_id: int, now: datetime) -> str | None:
    """`isdr jobs retry`: restart a failed job at the step it failed; what happens, or None.

    submit: submitted again (its series' files must still be there); poll: polled again,
    with a new GET_TIMEOUT; deliver: the destinations that gave up are tried again
    (files they confirmed are not sent again), after a new download if the job's files
    were removed meanwhile.
    """
    with Session(engine) as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state != JobState.FAILED:
            return None
        step = job.failed_step or Step.SUBMIT
        job.attempts, job.next_attempt_at, job.poll_errors = 0, now, 0
        job.remote_delete_due_at = None  # the task is wanted again: a due delete is off
        if step == Step.SUBMIT:
            change_state(session, job, JobState.PENDING, "retried by hand: submitting again", now)
            return "pending: it will be submitted again"
        if step == Step.DELIVER and job.files_removed_at is None:
            _reopen_failed_deliveries(session, job_id, now)
            change_state(
                session, job, JobState.DELIVERING, "retried by hand: delivering again", now
            )
            return "delivering: the destinations that failed are tried again"
        job.submitted_at = now
        change_state(
            session, job, JobState.SUBMITTED, f"retried by hand at step {step}: polling", now
        )
        return "submitted: the server is polled again for its output"


def _reopen_failed_deliveries(session: Session, job_id: int, now: datetime) -> None:
    failed = (Delivery.job_id == job_id, Delivery.state == DeliveryState.FAILED)
    session.execute(
        update(Delivery)
        .where(*failed)
        .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=now)
    )
    session.execute(  # a sender is looked up again: SENDERS_FILE may have been fixed
        update(Delivery)
        .where(Delivery.job_id == job_id, Delivery.sender_ae.is_not(None))
        .where(Delivery.state == DeliveryState.PENDING)
        .values(port=0)
    )


CANCELLABLE = {
    JobState.PENDING: Step.SUBMIT,
    JobState.WAITING: Step.SUBMIT,
    JobState.SUBMITTED: Step.POLL,
    JobState.DELIVERING: Step.DELIVER,
}


def cancel(engine: Engine, job_id: int, who: str, now: datetime) -> str:
    """A person stops a job: it fails at the step it was at, with who stopped it as its
    reason (so a retry resumes it there), and its pending deliveries stop too. A job on
    the wire (its archive to its server, or an output to a destination) cannot be stopped
    halfway: ValueError says so, as for a job that has ended; LookupError for none."""
    with Session(engine) as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"no job {job_id}")
        step = CANCELLABLE.get(JobState(job.state))
        if step is None:
            raise ValueError(f"job {job_id} is {job.state}: {_why_not(JobState(job.state))}")
        if _sending(session, job_id):
            raise ValueError(
                f"job {job_id} has a delivery on the wire: cancel it once that one has ended"
            )
        reason = f"cancelled by {who} at step {step}"
        session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id, Delivery.state.in_(_OPEN_DELIVERIES))
            .values(state=DeliveryState.FAILED, last_error=reason)
        )
        job.failed_step, job.last_error, job.remote_delete_due_at = step, reason, None
        change_state(session, job, JobState.FAILED, reason, now)
        return f"failed: {reason} (a retry resumes it there)"


_OPEN_DELIVERIES = (DeliveryState.PENDING, DeliveryState.SENDING)


def _sending(session: Session, job_id: int) -> bool:
    """Whether an association is sending one of the job's outputs now (it cannot be
    stopped halfway, and would record its end over a cancel)."""
    query = select(Delivery.id).where(
        Delivery.job_id == job_id, Delivery.state == DeliveryState.SENDING
    )
    return session.scalar(query.limit(1)) is not None


def _why_not(state: JobState) -> str:
    if state == JobState.SUBMITTING:
        return "its archive is on the wire to the server; cancel it once it is submitted"
    return "it has ended"


def output_files(engine: Engine, job_id: int) -> list[OutputRecord]:
    """Every file of a job's output, by name."""
    with Session(engine) as session:
        rows = session.scalars(
            select(OutputFile).where(OutputFile.job_id == job_id).order_by(OutputFile.name)
        )
        return [_record(row) for row in rows]
