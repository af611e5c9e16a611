"""The REST API, /api/v1: series and jobs, read, and a failed job retried.

Answers are pydantic models made from the database's frozen views, never ORM rows. No
PatientID or name is in a URL or an answer: series and jobs are named by their ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel

from isdr.db.delivery import cancel, job_details, output_files, retry_failed
from isdr.db.jobs import list_jobs, recent_events, timeline
from isdr.db.pool import set_drained, statuses
from isdr.db.series import get_series, list_series
from isdr.db.servers import list_servers
from isdr.db.views import JobView, SeriesView
from isdr.domain.servers import NAME_PATTERN
from isdr.domain.states import JobState, SeriesState
from isdr.web.auth import principal_of
from isdr.web.context import WebContext

PAGE_MAX = 500
ID_MAX = 2**63 - 1  # the database's integers
Id = Annotated[int, Path(ge=1, le=ID_MAX)]
Short = Annotated[str, Query(max_length=200)]
ServerName = Annotated[str, Path(pattern=NAME_PATTERN)]


class PoolServerOut(BaseModel):
    """One server of SERVERS_FILE, as the pools see it."""

    name: str
    url: str
    api: int
    models: list[str]
    capacity: int
    weight: float
    state: str
    in_flight: int
    last_probe_at: datetime | None
    last_probe: str
    last_error: str
    error_rate: float | None
    down_since: datetime | None
    drained_at: datetime | None


class DrainOut(BaseModel):
    """What a drain or resume did."""

    name: str
    outcome: str


def _set_drained(context: WebContext, request: Request, name: str, *, drained: bool) -> DrainOut:
    who = f"{principal_of(request).name} (API)"
    try:
        said = set_drained(context.engine, context.servers().servers, name, drained,
                           context.clock(), who)  # fmt: skip
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    return DrainOut(name=name, outcome=said)


class SeriesOut(BaseModel):
    """One series round."""

    id: int
    series_instance_uid: str
    round: int
    study_instance_uid: str
    modality: str
    series_description: str
    study_description: str
    instance_count: int
    total_bytes: int
    first_received_at: datetime
    last_received_at: datetime
    calling_ae_title: str
    state: SeriesState
    state_reason: str


class JobOut(BaseModel):
    """One job."""

    id: int
    series_ids: list[int]
    fingerprint: str
    model: str
    server: str
    state: JobState
    attempts: int
    last_error: str
    task_uid: str
    created_at: datetime
    updated_at: datetime
    failed_step: str | None
    waiting_for: str | None = None  # state waiting: why (its pool has no member free)


class EventOut(BaseModel):
    """One line of a job's timeline."""

    at: datetime
    state: str
    message: str


class DeliveryOut(BaseModel):
    """Where a job's output goes, and how far it got."""

    destination: str  # AE@host:port
    state: str
    attempts: int
    confirmed: int  # DICOM files the destination confirmed
    last_error: str


class OutputOut(BaseModel):
    """One file of a job's output."""

    name: str
    size: int
    dicom: bool  # sent to the destinations; else kept in the job's folder
    sop_class_uid: str


class JobDetail(JobOut):
    """One job with its timeline, deliveries and output files."""

    timeline: list[EventOut]
    deliveries: list[DeliveryOut]
    outputs: list[OutputOut]


class ServerOut(BaseModel):
    """One InferenceServer's last heartbeat."""

    url: str
    api: int
    up: bool
    detail: str
    checked_at: datetime
    up_since: datetime | None


class RecentEventOut(EventOut):
    """One line of some job's timeline."""

    job_id: int


class RetryOut(BaseModel):
    """What a retry did."""

    id: int
    outcome: str


def _utc(moment: datetime | None) -> datetime | None:
    """A time asked for, in UTC (one without a zone is taken as UTC, as the pages show)."""
    if moment is None or moment.tzinfo is not None:
        return None if moment is None else moment.astimezone(UTC)
    return moment.replace(tzinfo=UTC)


def _series_out(view: SeriesView) -> SeriesOut:
    fields = set(SeriesOut.model_fields)
    return SeriesOut.model_validate({name: getattr(view, name) for name in fields})


def _job_out(view: JobView) -> JobOut:
    return JobOut(
        id=view.id, series_ids=list(view.series_ids), fingerprint=view.fingerprint_name,
        model=view.model, server=view.server, state=JobState(view.state),
        attempts=view.attempts, last_error=view.last_error, task_uid=view.task_uid,
        created_at=view.created_at, updated_at=view.updated_at, failed_step=view.failed_step,
        waiting_for=view.waiting_for,
    )  # fmt: skip


def api_router(context: WebContext) -> APIRouter:
    """Every /api/v1 route (the token is checked by the app for all of them)."""
    router = APIRouter(prefix="/api/v1", tags=["api"])
    engine = context.reader

    @router.get("/series", response_model=list[SeriesOut])
    def series_list(
        state: SeriesState | None = None,
        modality: Short | None = None,
        calling_ae_title: Short | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = Query(100, ge=1, le=PAGE_MAX),
        offset: int = Query(0, ge=0, le=ID_MAX),
    ) -> list[SeriesOut]:
        """Series rounds, the most recently active first; filtered by state, modality,
        the sender's AE title, and the time of their last instance (from `since`, before
        `until`; ISO 8601, UTC unless the time says otherwise)."""
        rows = list_series(
            engine, limit, offset, None if state is None else state.value, modality=modality,
            calling_ae_title=calling_ae_title, since=_utc(since), until=_utc(until),
        )  # fmt: skip
        return [_series_out(row) for row in rows]

    @router.get("/series/{series_id}", response_model=SeriesOut)
    def series_one(series_id: Id) -> SeriesOut:
        """One series round."""
        found = get_series(engine, series_id)
        if found is None:
            raise HTTPException(404, f"no series {series_id}")
        return _series_out(found)

    @router.get("/jobs", response_model=list[JobOut])
    def jobs_list(
        state: JobState | None = None,
        model: Short | None = None,
        server: Annotated[str, Query(max_length=2000)] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = Query(100, ge=1, le=PAGE_MAX),
        offset: int = Query(0, ge=0, le=ID_MAX),
    ) -> list[JobOut]:
        """Jobs, the newest first; filtered by state, model (its id), server (its URL, as
        `server` in the answers), and the time they were created (from `since`, before
        `until`; ISO 8601, UTC unless the time says otherwise)."""
        rows = list_jobs(
            engine, limit, offset, None if state is None else state.value, model=model,
            server=server, since=_utc(since), until=_utc(until),
        )  # fmt: skip
        return [_job_out(row) for row in rows]

    @router.get("/jobs/{job_id}", response_model=JobDetail)
    def job_one(job_id: Id) -> JobDetail:
        """One job: its timeline, its deliveries and its output files."""
        found = timeline(engine, job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        job, events = found
        lines = [EventOut(at=e.at, state=e.state, message=e.message) for e in events]
        deliveries = [DeliveryOut.model_validate(vars(d)) for d in job_details(engine, job_id)[0]]
        outputs = [
            OutputOut(name=f.name, size=f.size, dicom=f.is_dicom, sop_class_uid=f.sop_class_uid)
            for f in output_files(engine, job_id)
        ]
        return JobDetail(**_job_out(job).model_dump(), timeline=lines, deliveries=deliveries,
                         outputs=outputs)  # fmt: skip

    @router.get("/events", response_model=list[RecentEventOut])
    def events(limit: int = Query(100, ge=1, le=PAGE_MAX)) -> list[RecentEventOut]:
        """The newest lines of every job's timeline, newest first."""
        return [RecentEventOut.model_validate(vars(e)) for e in recent_events(engine, limit)]

    @router.get("/servers", response_model=list[ServerOut])
    def servers() -> list[ServerOut]:
        """Each InferenceServer the fingerprints name: whether it answered its last
        heartbeat (every minute), what it answered, and since when it is up."""
        return [ServerOut.model_validate(vars(row)) for row in list_servers(engine)]

    @router.get("/pool", response_model=list[PoolServerOut])
    def pool_servers() -> list[PoolServerOut]:
        """Each server of SERVERS_FILE (and each the database still remembers): state
        (up, down, drained), jobs in flight, capacity, weight, last probe, error rate in
        the last hour."""
        rows = statuses(engine, context.servers().servers)
        return [PoolServerOut.model_validate(vars(row)) for row in rows]

    @router.post("/pool/{name}/drain", response_model=DrainOut)
    def pool_drain(name: ServerName, request: Request) -> DrainOut:
        """Stop new jobs going to a server; its running jobs finish (as `isdr servers
        drain`); 404 for a name SERVERS_FILE does not have."""
        return _set_drained(context, request, name, drained=True)

    @router.post("/pool/{name}/resume", response_model=DrainOut)
    def pool_resume(name: ServerName, request: Request) -> DrainOut:
        """Let a drained (or down) server take jobs again (as `isdr servers resume`)."""
        return _set_drained(context, request, name, drained=False)

    @router.post("/jobs/{job_id}/retry", response_model=RetryOut)
    def job_retry(job_id: Id) -> RetryOut:
        """A failed job again, from the step it failed at (as `isdr jobs retry`)."""
        outcome = retry_failed(context.engine, job_id, context.clock())
        if outcome is None:
            raise HTTPException(409, f"job {job_id} is not failed (or does not exist)")
        return RetryOut(id=job_id, outcome=outcome)

    @router.post("/jobs/{job_id}/cancel", response_model=RetryOut)
    def job_cancel(job_id: Id, request: Request) -> RetryOut:
        """Stop a job: it fails at the step it is at, with who stopped it as its reason (a
        retry resumes it there); 409 for a job that has ended, or whose submit is on the
        wire, 404 for none."""
        who = principal_of(request).name
        try:
            outcome = cancel(context.engine, job_id, who, context.clock())
        except LookupError as exc:
            raise HTTPException(404, str(exc).strip("'")) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return RetryOut(id=job_id, outcome=outcome)

    return router
