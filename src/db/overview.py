"""What the console's dashboard shows, read in one short transaction: rounds and jobs by
state, and instances received and jobs ended per hour over the last day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from isdr.db.models import Instance, Job, Series
from isdr.domain.states import JobState, SeriesState

HOURS = 24


@dataclass(frozen=True)
class Hour:
    """One hour of the last day."""

    start: datetime
    instances: int  # received
    delivered: int  # jobs that ended delivered
    failed: int  # jobs that ended failed (and are still failed)


@dataclass(frozen=True)
class Overview:
    """The dashboard's counts."""

    series: dict[str, int]  # by state, every state (0 included)
    jobs: dict[str, int]
    hours: list[Hour]  # oldest first; the last one is the current hour


def overview(engine: Engine, now: datetime) -> Overview:
    """The counts as the database has them now."""
    current = now.replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=HOURS - 1 - index) for index in range(HOURS)]
    with Session(engine) as session:
        series = counts_by_state(session, Series.state, [state.value for state in SeriesState])
        jobs = counts_by_state(session, Job.state, [state.value for state in JobState])
        instances = _per_hour(session, Instance.received_at, starts)
        delivered = _ended_per_hour(session, JobState.DELIVERED, starts)
        failed = _ended_per_hour(session, JobState.FAILED, starts)
    hours = [
        Hour(start, count, done, lost)
        for start, count, done, lost in zip(starts, instances, delivered, failed, strict=True)
    ]
    return Overview(series, jobs, hours)


def counts_by_state(
    session: Session, column: InstrumentedAttribute[str], states: list[str]
) -> dict[str, int]:
    """Rows by the state in `column`: every one of `states`, 0 included."""
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    counts = {str(state): int(count) for state, count in rows}
    return {state: counts.get(state, 0) for state in states}


def _per_hour(
    session: Session,
    column: InstrumentedAttribute[datetime],
    starts: list[datetime],
    *where: object,
) -> list[int]:
    """Rows per hour, in one pass over the last day's rows (portable: no date functions)."""
    ends = [*starts[1:], starts[-1] + timedelta(hours=1)]
    sums = [
        func.coalesce(func.sum(case(((column >= start) & (column < end), 1), else_=0)), 0)
        for start, end in zip(starts, ends, strict=True)
    ]
    row = session.execute(select(*sums).where(column >= starts[0], *where)).one()  # type: ignore[arg-type]
    return [int(value) for value in row]


def _ended_per_hour(session: Session, state: JobState, starts: list[datetime]) -> list[int]:
    return _per_hour(session, Job.updated_at, starts, Job.state == state)
