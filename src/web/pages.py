"""The console's pages: server-rendered, kept live by htmx swapping small partials.

Every page is a frame (`X.html`) whose live part is a partial (`_X.html`) that htmx asks
for again every few seconds; the pages read through the same functions as the API, so
both say the same. Actions (retry, cancel, a fingerprint saved or removed) are POSTs that
the access dependency lets through only for an operator with the session's CSRF token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from isdr.db.delivery import cancel, job_details, output_files, retry_failed
from isdr.db.jobs import jobs_of_series, list_jobs, recent_events, timeline
from isdr.db.overview import overview
from isdr.db.pool import set_drained, state_of, statuses
from isdr.db.series import get_series, list_series
from isdr.db.servers import list_servers
from isdr.db.views import JobView
from isdr.domain.states import JobState, SeriesState
from isdr.web.api import ID_MAX
from isdr.web.auth import principal_of
from isdr.web.context import WebContext
from isdr.web.fingerprints import (
    DraftInvalid,
    NotWritable,
    check_text,
    dry_run,
    list_fingerprints,
    read_text,
    remove_file,
    write_text,
)
from isdr.web.policy import POLICY
from isdr.web.templating import page

logger = logging.getLogger(__name__)

ENDED = frozenset({JobState.DELIVERED, JobState.FAILED})
Offset = Annotated[int, Query(ge=0, le=ID_MAX)]
Text = Annotated[str, Form(max_length=1_000_000)]
NEW_FINGERPRINT = """{
  "model_human_readable_id": "",
  "inference_server_url": "https://",
  "inference_server_api": 2,
  "modality_regex": "CT",
  "scus": []
}
"""


def pages_router(context: WebContext, folder: Path) -> APIRouter:
    """The pages and their partials."""
    router = APIRouter(include_in_schema=False)
    _dashboard(router, context)
    _series(router, context)
    _jobs(router, context)
    _fingerprints(router, context, folder)
    return router


def _render(request: Request, template: str, status_code: int = 200, **values: object) -> Response:
    return page(request, template, principal_of(request), status_code, **values)


def _dashboard(router: APIRouter, context: WebContext) -> None:
    @router.get("/", response_class=HTMLResponse)
    def dashboard(request: Request) -> Response:
        return _render(request, "dashboard.html", title="Dashboard")

    @router.get("/partials/dashboard", response_class=HTMLResponse)
    def dashboard_part(request: Request) -> Response:
        counts = overview(context.reader, context.clock())
        peak = max([hour.instances for hour in counts.hours] + [1])
        return _render(
            request, "_dashboard.html", counts=counts, peak=peak,
            servers=list_servers(context.reader), free=_free(context),
            associations=context.live.associations(),
            pool=statuses(context.reader, context.servers().servers),
        )  # fmt: skip

    @router.post("/pool/{name}/{action}", response_class=HTMLResponse)
    def pool_action(request: Request, name: str, action: str) -> Response:
        if action not in ("drain", "resume"):
            raise HTTPException(404, "drain or resume")
        try:
            who = f"{principal_of(request).name} (console)"
            note = set_drained(context.engine, context.servers().servers, name,
                               action == "drain", context.clock(), who)  # fmt: skip
        except LookupError as exc:
            note = str(exc)
        return _render(request, "_note.html", note=note)

    @router.get("/docs", response_class=HTMLResponse)
    def api_page(request: Request) -> Response:
        """Swagger UI (vendored) on /openapi.json; it styles itself inline, so this page
        alone allows inline styles."""
        answer = _render(request, "docs.html")
        answer.headers["Content-Security-Policy"] = POLICY.replace(
            "style-src 'self'", "style-src 'self' 'unsafe-inline'"
        )
        return answer

    @router.get("/events", response_class=HTMLResponse)
    def events(request: Request) -> Response:
        return _render(request, "events.html", title="Events")

    @router.get("/partials/events", response_class=HTMLResponse)
    def events_part(request: Request) -> Response:
        return _render(request, "_events.html", events=recent_events(context.reader, 200))


def _free(context: WebContext) -> int | None:
    try:
        return context.live.free_bytes()
    except OSError:
        return None


def _series(router: APIRouter, context: WebContext) -> None:
    @router.get("/series", response_class=HTMLResponse)
    def series_page(
        request: Request, state: SeriesState | None = None, offset: Offset = 0
    ) -> Response:
        return _render(request, "series.html", title="Series", state=state, states=SeriesState,
                       offset=offset)  # fmt: skip

    @router.get("/partials/series", response_class=HTMLResponse)
    def series_part(
        request: Request,
        state: SeriesState | None = None,
        offset: Offset = 0,
    ) -> Response:
        rows = list_series(context.reader, 100, offset, None if state is None else state.value)
        return _render(request, "_series.html", rows=rows, state=state, offset=offset)

    @router.get("/series/{series_id}", response_class=HTMLResponse)
    def series_one(request: Request, series_id: int) -> Response:
        found = get_series(context.reader, series_id) if 0 < series_id <= ID_MAX else None
        if found is None:
            raise HTTPException(404, f"no series {series_id}")
        jobs = jobs_of_series(context.reader, series_id)
        return _render(request, "series_one.html", title=f"Series {series_id}", series=found,
                       jobs=jobs)  # fmt: skip


def _jobs(router: APIRouter, context: WebContext) -> None:
    @router.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request, state: JobState | None = None, offset: Offset = 0) -> Response:
        return _render(request, "jobs.html", title="Jobs", state=state, states=JobState,
                       offset=offset)  # fmt: skip

    @router.get("/partials/jobs", response_class=HTMLResponse)
    def jobs_part(
        request: Request,
        state: JobState | None = None,
        offset: Offset = 0,
    ) -> Response:
        rows = list_jobs(context.reader, 100, offset, None if state is None else state.value)
        return _render(request, "_jobs.html", rows=rows, state=state, offset=offset)

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int) -> Response:
        return _job(request, context, job_id, "job.html")

    @router.get("/partials/jobs/{job_id}", response_class=HTMLResponse)
    def job_part(request: Request, job_id: int) -> Response:
        return _job(request, context, job_id, "_job.html")

    @router.get("/partials/jobs/{job_id}/pictures", response_class=HTMLResponse)
    def job_pictures(request: Request, job_id: int) -> Response:
        return _job(request, context, job_id, "_job_pictures.html")

    @router.get("/partials/jobs/{job_id}/timeline", response_class=HTMLResponse)
    def job_timeline(request: Request, job_id: int) -> Response:
        return _job(request, context, job_id, "_timeline.html")

    @router.post("/jobs/{job_id}/retry", response_class=HTMLResponse)
    def job_retry(request: Request, job_id: int) -> Response:
        outcome = (
            retry_failed(context.engine, job_id, context.clock()) if job_id <= ID_MAX else None
        )
        note = f"job {job_id} is {outcome}" if outcome else f"job {job_id} is not failed"
        return _render(request, "_note.html", note=note)

    @router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
    def job_cancel(request: Request, job_id: int) -> Response:
        who = principal_of(request).name
        try:
            if job_id > ID_MAX:
                raise LookupError(f"no job {job_id}")
            note = f"job {job_id} {cancel(context.engine, job_id, who, context.clock())}"
        except (LookupError, ValueError) as exc:
            note = str(exc).strip("'")
        return _render(request, "_note.html", note=note)


def _job(request: Request, context: WebContext, job_id: int, template: str) -> Response:
    found = timeline(context.reader, job_id) if 0 < job_id <= ID_MAX else None
    if found is None:
        raise HTTPException(404, f"no job {job_id}")
    job, events = found
    deliveries, _ = job_details(context.reader, job_id)
    files = output_files(context.reader, job_id)
    return _render(
        request, template, title=f"Job {job_id}", job=job, events=events, deliveries=deliveries,
        dicom=[f for f in files if f.is_dicom], kept=[f for f in files if not f.is_dicom],
        ended=job.state in ENDED, server_state=_server_state(context, job),
    )  # fmt: skip


def _server_state(context: WebContext, job: JobView) -> str:
    """The state of the pool member a job is on, when it is not up ("" otherwise)."""
    if not job.server_name or job.state in ENDED:
        return ""
    state = state_of(context.reader, context.servers().servers, job.server_name)
    return "" if state == "up" else state


def _fingerprints(router: APIRouter, context: WebContext, folder: Path) -> None:
    @router.get("/fingerprints", response_class=HTMLResponse)
    def fingerprints_page(request: Request) -> Response:
        return _render(request, "fingerprints.html", title="Fingerprints",
                       files=list_fingerprints(folder))  # fmt: skip

    @router.get("/fingerprints/{name}", response_class=HTMLResponse)
    def editor(request: Request, name: str, series: int | None = None) -> Response:
        try:
            text = NEW_FINGERPRINT if name == "new" else read_text(folder, name)
        except LookupError:
            raise HTTPException(404, f"no fingerprint {name}") from None
        recent = list_series(context.reader, 50)
        return _render(request, "editor.html", title=f"Fingerprint {name}", name=name,
                       text=text, problems=check_text(text, name), recent=recent)  # fmt: skip

    @router.post("/partials/fingerprints/check", response_class=HTMLResponse)
    def check(
        request: Request, text: Text, name: Annotated[str, Form()] = "draft.json"
    ) -> Response:
        return _render(request, "_problems.html", problems=check_text(text, name), saved="")

    @router.post("/partials/fingerprints/dry-run", response_class=HTMLResponse)
    def try_draft(
        request: Request, text: Text, series_id: Annotated[int, Form(ge=1, le=ID_MAX)]
    ) -> Response:
        try:
            lines = dry_run(context, folder, series_id, text)
        except (LookupError, DraftInvalid) as exc:
            lines = [f"cannot try it: {str(exc).strip(chr(39))}"]
        return _render(request, "_dry_run.html", lines=lines)

    @router.post("/fingerprints/{name}", response_class=HTMLResponse)
    def save(
        request: Request, name: str, text: Text, file: Annotated[str, Form(alias="name")] = ""
    ) -> Response:
        who = principal_of(request).name
        name = file if name == "new" else name  # a new file is named in the form
        try:
            write_text(folder, name, text)
        except DraftInvalid as exc:
            return _render(request, "_problems.html", problems=exc.problems, saved="")
        except HTTPException as exc:  # a name that is not a file name
            return _render(request, "_problems.html", problems=[], saved="", note=exc.detail)
        except NotWritable as exc:
            return _render(request, "_problems.html", problems=[], saved="", note=str(exc))
        logger.info("fingerprint %s written from the console by %s", name, who)
        return _render(request, "_problems.html", problems=[], saved=name)

    @router.post("/fingerprints/{name}/delete", response_class=HTMLResponse)
    def delete(request: Request, name: str) -> Response:
        try:
            remove_file(folder, name)
        except (LookupError, NotWritable) as exc:
            return _render(request, "_problems.html", problems=[], saved="", note=str(exc))
        logger.info(
            "fingerprint %s removed from the console by %s", name, principal_of(request).name
        )
        return _render(request, "_problems.html", problems=[], saved="", note=f"{name} removed")
