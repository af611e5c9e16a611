"""The pools' state in the database: each named server's health and drain, the jobs each
holds, and which member holds each study. Every relay on the database reads the same.

A member is down after SERVER_DOWN_AFTER failed probes, or failed submits, in a row. A
probe that answers brings it back; one that was down for its submits comes back on trial
(one more failed submit takes it out again, a good one clears it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from isdr.db.jobs import change_state
from isdr.db.models import Job, PoolServer, StudyAffinity
from isdr.domain.servers import PoolMember, Server
from isdr.domain.states import JobState

logger = logging.getLogger(__name__)

IN_FLIGHT = (JobState.SUBMITTING, JobState.SUBMITTED)
WINDOW = timedelta(hours=1)  # the error rate's


@dataclass(frozen=True)
class ServerStatus:
    """One named server as `isdr servers`, the API and the console show it."""

    name: str
    url: str
    api: int
    models: tuple[str, ...]
    capacity: int
    weight: float
    state: str  # up, down, drained, "down, drained"; "removed" when not in the file
    in_flight: int
    last_probe_at: datetime | None
    last_probe: str
    last_error: str
    error_rate: float | None  # failures / requests in the last hour; None: no request
    down_since: datetime | None
    drained_at: datetime | None


def _row(session: Session, name: str) -> PoolServer:
    row = session.scalars(
        select(PoolServer).where(PoolServer.name == name).with_for_update()
    ).first()
    if row is None:
        row = PoolServer(name=name, probe_failures=0, submit_failures=0, last_error="",
                         last_probe="", window_requests=0, window_errors=0)  # fmt: skip
        session.add(row)
    return row


def in_flight(engine: Engine, names: Iterable[str]) -> dict[str, int]:
    """Jobs each server holds or is being sent (states submitting and submitted)."""
    with Session(engine) as session:
        rows = session.execute(
            select(Job.server_name, func.count())
            .where(Job.server_name.in_(list(names)), Job.state.in_(IN_FLIGHT))
            .group_by(Job.server_name)
        )
        return {str(name): int(count) for name, count in rows}


def members(
    engine: Engine, servers: Sequence[Server], now: datetime, recent: timedelta
) -> dict[str, PoolMember]:
    """Each server as the choice sees it: health and drain, jobs in flight, and jobs it
    took since `now - recent`."""
    names = [server.name for server in servers]
    flying = in_flight(engine, names)
    with Session(engine) as session:
        rows = {
            row.name: row
            for row in session.scalars(select(PoolServer).where(PoolServer.name.in_(names)))
        }
        taken = {
            str(name): int(count)
            for name, count in session.execute(
                select(Job.server_name, func.count())
                .where(Job.server_name.in_(names), Job.updated_at >= now - recent)
                .group_by(Job.server_name)
            )
        }
    found = {}
    for server in servers:
        row = rows.get(server.name)
        found[server.name] = PoolMember(
            server.name, server.capacity, server.weight,
            in_flight=flying.get(server.name, 0), recent=taken.get(server.name, 0),
            down=row is not None and row.down_since is not None,
            drained=row is not None and row.drained_at is not None,
        )  # fmt: skip
    return found


def affinities(
    engine: Engine, keys: Iterable[tuple[str, str]], now: datetime
) -> dict[tuple[str, str], str]:
    """The member holding each (study, model), for those not expired."""
    wanted = set(keys)
    studies = list({study for study, _model in wanted})
    if not studies:
        return {}
    with Session(engine) as session:
        rows = session.execute(
            select(
                StudyAffinity.study_instance_uid, StudyAffinity.model, StudyAffinity.server_name
            ).where(StudyAffinity.study_instance_uid.in_(studies), StudyAffinity.expires_at > now)
        )
        return {(s, m): name for s, m, name in rows if (s, m) in wanted}


def remember(
    engine: Engine, held: Iterable[tuple[str, str, str]], now: datetime, keep: timedelta
) -> None:
    """Record that each (study, model, member) holds the study until `now + keep`; expired
    rows go at the same time."""
    latest = {(study, model): name for study, model, name in held}  # the last word counts
    studies = list({study for study, _model in latest})
    with Session(engine) as session, session.begin():
        rows = {
            (row.study_instance_uid, row.model): row
            for row in session.scalars(
                select(StudyAffinity).where(StudyAffinity.study_instance_uid.in_(studies))
            )
        }
        for (study, model), name in latest.items():
            row = rows.get((study, model))
            if row is None:
                session.add(StudyAffinity(study_instance_uid=study, model=model,
                                          server_name=name, expires_at=now + keep))  # fmt: skip
            else:
                row.server_name, row.expires_at = name, now + keep
        session.execute(delete(StudyAffinity).where(StudyAffinity.expires_at <= now))


def wait(engine: Engine, job_id: int, reason: str, now: datetime) -> bool:
    """A job no member can take now waits (state `waiting`), saying why; whether it just
    began to (the timeline gets a line then; a new reason only replaces the old one)."""
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.state not in (JobState.PENDING, JobState.WAITING):
            return False
        job.waiting_for = reason
        if job.state == JobState.WAITING:
            return False
        change_state(session, job, JobState.WAITING, reason, now)
        return True


def record(
    engine: Engine, name: str, *, probe: bool, ok: bool, detail: str, now: datetime,
    down_after: int,
) -> str | None:  # fmt: skip
    """Count one probe or submit of a server; the words of the change of its state when
    this made one (it went down, or came back), else None."""
    with Session(engine) as session, session.begin():
        row = _row(session, name)
        _count(row, ok, now)
        if probe:
            row.last_probe_at, row.last_probe = now, detail
        if not ok:
            row.last_error = detail
            return _failed(row, probe, detail, now, down_after)
        return _answered(row, probe, detail, down_after)


def _count(row: PoolServer, ok: bool, now: datetime) -> None:
    if row.window_start is None or now - row.window_start > WINDOW:
        row.window_start, row.window_requests, row.window_errors = now, 0, 0
    row.window_requests = (row.window_requests or 0) + 1
    row.window_errors = (row.window_errors or 0) + (not ok)


def _failed(
    row: PoolServer, probe: bool, detail: str, now: datetime, down_after: int
) -> str | None:
    if probe:
        row.probe_failures = (row.probe_failures or 0) + 1
    else:
        row.submit_failures = (row.submit_failures or 0) + 1
    count = row.probe_failures if probe else row.submit_failures
    if row.down_since is not None or count < down_after:
        return None
    row.down_since = now
    what = "probes" if probe else "submits"
    return (
        f"is down: {count} {what} failed in a row (last: {detail}); it gets no new jobs, "
        "its waiting jobs go to the other members"
    )


def _answered(row: PoolServer, probe: bool, detail: str, down_after: int) -> str | None:
    if not probe:
        row.submit_failures = 0
        return None
    row.probe_failures = 0
    if row.down_since is None:
        return None
    row.down_since = None
    if (row.submit_failures or 0) >= down_after:
        row.submit_failures = down_after - 1  # on trial: one more failed submit takes it out
        return f"answers its probe again ({detail}): back in its pool, on trial"
    return f"answers again ({detail}): back in its pool"


def drain(engine: Engine, name: str, now: datetime) -> bool:
    """Stop new jobs going to a server; whether it was not drained already."""
    with Session(engine) as session, session.begin():
        row = _row(session, name)
        if row.drained_at is not None:
            return False
        row.drained_at = now
        return True


def resume(engine: Engine, name: str) -> bool:
    """Let a drained (or down) server take jobs again; whether it was drained or down."""
    with Session(engine) as session, session.begin():
        row = _row(session, name)
        changed = row.drained_at is not None or row.down_since is not None
        row.drained_at = row.down_since = None
        row.probe_failures, row.submit_failures = 0, 0
        return changed


def statuses(engine: Engine, servers: Sequence[Server]) -> list[ServerStatus]:
    """Every server of the file, then every other the database remembers, by name."""
    with Session(engine) as session:
        rows = {row.name: row for row in session.scalars(select(PoolServer))}
    listed = {server.name for server in servers}
    flying = in_flight(engine, listed | set(rows))
    found = [_status(server, rows.get(server.name), flying) for server in servers]
    found += [_status(None, rows[name], flying) for name in sorted(set(rows) - listed)]
    return sorted(found, key=lambda status: status.name)


def state_of(engine: Engine, servers: Sequence[Server], name: str) -> str:
    """One server's state as `statuses` says it ("" for a name neither the file nor the
    database knows), read from its row alone."""
    with Session(engine) as session:
        row = session.scalars(select(PoolServer).where(PoolServer.name == name)).first()
    listed = next((server for server in servers if server.name == name), None)
    return "" if listed is None and row is None else _status(listed, row, {}).state


def _status(server: Server | None, row: PoolServer | None, flying: dict[str, int]) -> ServerStatus:
    name = server.name if server is not None else row.name if row is not None else "?"
    down = row is not None and row.down_since is not None
    drained = row is not None and row.drained_at is not None
    state = ", ".join(w for w, on in (("down", down), ("drained", drained)) if on) or "up"
    requests = row.window_requests if row is not None else 0
    return ServerStatus(
        name=name,
        url=str(server.url) if server is not None else "",
        api=server.api if server is not None else 0,
        models=tuple(server.models) if server is not None else (),
        capacity=server.capacity if server is not None else 0,
        weight=server.weight if server is not None else 0.0,
        state=state if server is not None else "removed",
        in_flight=flying.get(name, 0),
        last_probe_at=row.last_probe_at if row is not None else None,
        last_probe=row.last_probe if row is not None else "",
        last_error=row.last_error if row is not None else "",
        error_rate=(row.window_errors / requests) if row is not None and requests else None,
        down_since=row.down_since if row is not None else None,
        drained_at=row.drained_at if row is not None else None,
    )


def set_drained(
    engine: Engine, servers: Sequence[Server], name: str, drained: bool, now: datetime,
    who: str = "",
) -> str:  # fmt: skip
    """Drain (or resume) the server of that name, in words, with one log line saying who
    did it; LookupError when no server of the file has it. `isdr servers`, the API and
    the console all come here."""
    if not any(server.name == name for server in servers):
        raise LookupError(f"no server named {name!r} in SERVERS_FILE")
    if drained:
        changed = drain(engine, name, now)
        said = (f"{name} is drained: it gets no new jobs; its {_flying(engine, name)} finish"
                if changed else f"{name} was drained already")  # fmt: skip
    else:
        changed = resume(engine, name)
        said = f"{name} takes jobs again" if changed else f"{name} was taking jobs already"
    if changed:
        logger.warning("InferenceServer %s (by %s)", said, who or "someone")
    return said


def _flying(engine: Engine, name: str) -> str:
    count = in_flight(engine, [name]).get(name, 0)
    return f"{count} job(s) in flight"
