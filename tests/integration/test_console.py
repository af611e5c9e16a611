"""The console through the ASGI test client: logins, roles, CSRF, pages and actions.

A real database and users file; no relay runs (the browser tests run one)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from isdr.db.engine import make_engine, reader_engine
from isdr.db.models import Delivery, Job, Series
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.servers import Servers
from isdr.domain.states import DeliveryState, JobState, SeriesState
from isdr.web.app import create_app
from isdr.web.auth import SESSION_COOKIE
from isdr.web.context import Live, WebContext
from isdr.web.users import Role, Users, remove_user, set_user

TOKEN = "a-token-of-the-tests-0123456789"
PASSWORD = "a long password"
FINGERPRINT = Fingerprint.model_validate({
    "modality_regex": "CT", "inference_server_url": "https://127.0.0.1:1",
    "model_human_readable_id": "ct-model", "scus": [],
})  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'isdr.sqlite3'}")
    yield engine
    engine.dispose()


@pytest.fixture
def context(tmp_path: Path, engine: Engine) -> WebContext:
    users = tmp_path / "users.json"
    set_user(users, "olga", Role.OPERATOR, PASSWORD)
    set_user(users, "victor", Role.VIEWER, PASSWORD)
    return WebContext(
        engine=engine, reader=reader_engine(str(engine.url)), token=TOKEN, checks={},
        live=Live(free_bytes=lambda: 10**9, associations=lambda: 0), clock=now,
        users=Users(users), incoming_dir=tmp_path / "incoming", jobs_dir=tmp_path / "jobs",
    )  # fmt: skip


@pytest.fixture
def client(context: WebContext, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(context, tmp_path / "fingerprints")
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as client:
        yield client


def log_in(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in; the session's CSRF token (from the page's htmx headers)."""
    answer = client.post("/login", data={"name": name, "password": password, "target": "/"})
    assert answer.status_code == 303, answer.text
    page = client.get("/")
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def a_job(engine: Engine, state: JobState) -> int:
    at = now()
    with Session(engine) as session, session.begin():
        series = Series(
            series_instance_uid=f"1.2.{at.timestamp()}", study_instance_uid="1.2",
            patient_id="CONSOLE", folder="x", first_received_at=at, last_received_at=at,
            state=SeriesState.MATCHED, modality="CT", series_description="chest",
        )  # fmt: skip
        session.add(series)
        session.flush()
        job = Job(
            series_id=series.id, fingerprint_name="ct.json", fingerprint=FINGERPRINT,
            state=state, attempts=0, next_attempt_at=at, last_error="", task_uid="t",
            created_at=at, updated_at=at, failed_step="submit" if state == "failed" else None,
        )  # fmt: skip
        session.add(job)
        session.flush()
        return int(job.id)


def test_pages_send_a_stranger_to_the_login_and_the_api_answers_401(client: TestClient) -> None:
    for path in ("/", "/jobs", "/series/1", "/fingerprints", "/events", "/partials/dashboard"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/login").status_code == 200


def test_a_person_logs_in_and_gets_a_strict_http_only_cookie(client: TestClient) -> None:
    answer = client.post("/login", data={"name": "olga", "password": PASSWORD, "target": "/jobs"})
    assert answer.status_code == 303 and answer.headers["location"] == "/jobs"
    cookie = answer.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/jobs").status_code == 200
    assert "olga (operator)" in client.get("/").text
    # the session reads the API too, and the OpenAPI document
    assert client.get("/api/v1/jobs").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_a_wrong_password_is_one_warning_with_the_address_and_nothing_typed(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        answer = client.post("/login", data={"name": "olga", "password": "not her password"})
    assert answer.status_code == 401 and "Wrong name or password" in answer.text
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == ["console login from testclient refused: wrong name or password"]
    assert "olga" not in caplog.text and "not her password" not in caplog.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def test_guessing_passwords_is_slowed_even_for_the_right_one(client: TestClient) -> None:
    for _ in range(5):
        assert (
            client.post("/login", data={"name": "olga", "password": "guess-guess"}).status_code
            == 401
        )
    answer = client.post("/login", data={"name": "olga", "password": PASSWORD})
    assert answer.status_code == 429 and "wait a minute" in answer.text


def test_a_viewer_reads_but_may_not_act(client: TestClient, engine: Engine) -> None:
    job_id = a_job(engine, JobState.FAILED)
    csrf = log_in(client, "victor")
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "victor (viewer)" in page.text
    assert 'id="retry"' not in page.text  # no buttons for a viewer
    headers = {"X-CSRF-Token": csrf}
    assert client.post(f"/jobs/{job_id}/retry", headers=headers).status_code == 403
    assert client.post(f"/api/v1/jobs/{job_id}/retry", headers=headers).status_code == 403
    put = client.put("/api/v1/fingerprints/x.json", json={}, headers=headers)
    assert put.status_code == 403


def test_an_operator_acts_only_with_the_sessions_csrf_token(
    client: TestClient, engine: Engine
) -> None:
    job_id = a_job(engine, JobState.FAILED)
    csrf = log_in(client, "olga")
    assert 'id="retry"' in client.get(f"/jobs/{job_id}").text
    assert client.post(f"/jobs/{job_id}/retry").status_code == 403
    assert (
        client.post(f"/jobs/{job_id}/retry", headers={"X-CSRF-Token": "forged"}).status_code == 403
    )
    answer = client.post(f"/jobs/{job_id}/retry", headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200
    assert "pending" in answer.text  # the job went back to pending
    # a plain form carries it as a field
    other = a_job(engine, JobState.FAILED)
    assert client.post(f"/jobs/{other}/retry", data={"csrf_token": csrf}).status_code == 200


def test_the_token_holder_needs_no_csrf_token(client: TestClient, engine: Engine) -> None:
    job_id = a_job(engine, JobState.FAILED)
    answer = client.post(
        f"/api/v1/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 200


def test_a_job_is_cancelled_where_it_is_and_a_retry_resumes_it(
    client: TestClient, engine: Engine
) -> None:
    job_id = a_job(engine, JobState.SUBMITTED)
    csrf = log_in(client, "olga")
    answer = client.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
    assert "cancelled by olga at step poll" in answer.text
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["failed_step"] == "poll"
    assert job["timeline"][-1]["message"] == "cancelled by olga at step poll"
    again = client.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
    assert "has ended" in again.text
    client.post(f"/jobs/{job_id}/retry", headers={"X-CSRF-Token": csrf})
    assert client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "submitted"
    submitting = a_job(engine, JobState.SUBMITTING)
    answer = client.post(f"/api/v1/jobs/{submitting}/cancel", headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 409 and "on the wire" in answer.json()["detail"]


def test_logging_out_ends_the_session_everywhere(client: TestClient) -> None:
    csrf = log_in(client, "olga")
    cookie = client.cookies.get(SESSION_COOKIE)
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    client.cookies.set(SESSION_COOKIE, cookie or "")
    assert client.get("/").status_code == 303


def test_the_users_file_counts_at_each_request_role_password_and_removal(
    client: TestClient, context: WebContext, tmp_path: Path
) -> None:
    log_in(client, "victor")
    users = context.users.path
    users.write_text(users.read_text().replace('"viewer"', '"operator"'))
    assert "victor (operator)" in client.get("/").text  # a new role counts at once
    set_user(users, "victor", Role.OPERATOR, "another long password")
    assert client.get("/").status_code == 303  # a new password ends the old sessions
    log_in(client, "victor", "another long password")
    remove_user(users, "victor")
    assert client.get("/").status_code == 303  # and so does a removal


def test_a_live_part_of_a_page_whose_session_ended_sends_the_page_to_the_login(
    client: TestClient,
) -> None:
    answer = client.get("/partials/jobs", headers={"HX-Request": "true"})
    assert answer.status_code == 204 and answer.headers["hx-redirect"] == "/login"
    assert client.get("/jobs?state=failed").headers["location"] == (
        "/login?next=/jobs%3Fstate%3Dfailed"
    )


def test_parallel_wrong_logins_cannot_slip_past_the_count(client: TestClient) -> None:
    def guess(_: int) -> int:
        return client.post("/login", data={"name": "olga", "password": "guess-guess"}).status_code

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(guess, range(12)))
    assert answers.count(401) <= 5 and answers.count(429) >= 7


def test_a_job_with_a_delivery_on_the_wire_is_not_cancelled(
    client: TestClient, engine: Engine
) -> None:
    job_id = a_job(engine, JobState.DELIVERING)
    with Session(engine) as session, session.begin():
        session.add(Delivery(
            job_id=job_id, position=0, host="127.0.0.1", port=1, ae_title="PACS",
            state=DeliveryState.SENDING, attempts=1, next_attempt_at=now(), last_error="",
            updated_at=now(),
        ))  # fmt: skip
    answer = client.post(
        f"/api/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 409 and "delivery on the wire" in answer.json()["detail"]


def test_the_login_goes_back_only_to_a_page_of_this_site(client: TestClient) -> None:
    for target in ("//evil.example/", "https://evil.example/", "\\\\evil"):
        answer = client.post(
            "/login", data={"name": "olga", "password": PASSWORD, "target": target}
        )
        assert answer.headers["location"] == "/"


def test_pages_load_nothing_from_outside_and_forbid_frames(client: TestClient) -> None:
    log_in(client, "olga")
    answer = client.get("/")
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["cache-control"] == "no-store"
    sources = re.findall(r'(?:src|href)="([^"]+)"', answer.text)
    assert sources and all(source.startswith("/") for source in sources)
    htmx = client.get("/static/htmx-2.0.11.min.js")
    assert htmx.status_code == 200 and b"htmx" in htmx.content


def test_every_page_and_partial_renders(client: TestClient, engine: Engine) -> None:
    job_id = a_job(engine, JobState.DELIVERED)
    log_in(client, "victor")
    paths = ["/", "/partials/dashboard", "/series", "/partials/series", "/jobs",
             "/partials/jobs", f"/jobs/{job_id}", f"/partials/jobs/{job_id}", "/series/1",
             "/events", "/partials/events", "/fingerprints", "/jobs?state=failed"]  # fmt: skip
    for path in paths:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
    assert client.get("/jobs/999").status_code == 404
    assert client.get(f"/jobs/{2**70}").status_code == 404
    assert "CONSOLE" not in client.get("/series/1").text  # no PatientID on a page


def test_the_editor_checks_a_draft_with_its_line_and_saves_only_a_valid_one(
    client: TestClient, tmp_path: Path
) -> None:
    csrf = log_in(client, "olga")
    headers = {"X-CSRF-Token": csrf}
    typo = (
        '{\n  "model_human_readable_id": "m",\n  "inference_server_url": "https://x",\n'
        '  "modality_regexx": "CT"\n}\n'
    )
    checked = client.post("/partials/fingerprints/check", data={"text": typo}, headers=headers)
    assert "line 4" in checked.text and "modality_regex" in checked.text
    saved = client.post("/fingerprints/new", data={"text": typo, "name": "m.json"}, headers=headers)
    assert "line 4" in saved.text and not (tmp_path / "fingerprints" / "m.json").exists()
    good = typo.replace("regexx", "regex")
    saved = client.post("/fingerprints/new", data={"text": good, "name": "m.json"}, headers=headers)
    assert "Saved as m.json" in saved.text
    assert (tmp_path / "fingerprints" / "m.json").read_text() == good
    assert "m.json" in client.get("/fingerprints").text
    assert "modality_regex" in client.get("/fingerprints/m.json").text
    bad_name = client.post(
        "/fingerprints/new", data={"text": good, "name": "../x.json"}, headers=headers
    )
    assert "file name" in bad_name.text


def test_the_dashboard_counts_each_hour_of_the_last_day(engine: Engine) -> None:
    from datetime import timedelta

    from isdr.db.models import Instance
    from isdr.db.overview import overview

    at = datetime(2026, 12, 3, 16, 30, tzinfo=UTC)
    job_id = a_job(engine, JobState.DELIVERED)
    with Session(engine) as session, session.begin():
        series_id = session.get_one(Job, job_id).series_id
        session.get_one(Job, job_id).updated_at = at - timedelta(hours=2, minutes=10)
        for index, ago in enumerate((0, 5, 40, 70, 60 * 25)):  # minutes before `at`
            session.add(Instance(
                series_id=series_id, sop_instance_uid=f"1.2.{index}", path=f"x/{index}",
                size=1, received_at=at - timedelta(minutes=ago),
            ))  # fmt: skip
    counts = overview(engine, at)
    assert [hour.instances for hour in counts.hours[-3:]] == [0, 2, 2]  # 14:00, 15:00, 16:00
    assert sum(hour.instances for hour in counts.hours) == 5 - 1  # a day ago is out
    assert counts.hours[-3].delivered == 1 and counts.jobs["delivered"] == 1


def test_a_fingerprint_folder_that_refuses_writes_is_said_not_a_crash(
    context: WebContext, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where FINGERPRINT_DIR should be")
    app = create_app(context, blocked)
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        draft = {"model_human_readable_id": "m", "inference_server_url": "https://x"}
        answer = client.put("/api/v1/fingerprints/m.json", json=draft, headers=auth)
        assert answer.status_code == 409 and "cannot be written" in answer.json()["detail"]
        csrf = log_in(client, "olga")
        saved = client.post("/fingerprints/new", headers={"X-CSRF-Token": csrf},
                            data={"text": json.dumps(draft), "name": "m.json"})  # fmt: skip
        assert saved.status_code == 200 and "cannot be written" in saved.text


OPEN = {"/healthz", "/readyz", "/login", "/logout"}


def flat(routes: list[Any]) -> list[Any]:
    """The routes, those of included routers too (FastAPI keeps them under their router)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found.extend(flat(inner.routes) if inner is not None else [route])
    return found


def routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) of the app but the static files, with ids filled in."""
    found = []
    for route in flat(app.routes):
        path = getattr(route, "path", "")
        if path.startswith("/static") or path in OPEN:
            continue
        for method in sorted(getattr(route, "methods", None) or []):
            if method != "HEAD":
                filled = re.sub(r"\{[^}]*\}", "1", path).replace("/1.json", "/x.json")
                found.append((method, filled))
    return found


def test_every_route_refuses_a_stranger_a_viewers_change_and_a_change_without_csrf(
    client: TestClient, context: WebContext, tmp_path: Path
) -> None:
    every = routes(client.app)
    assert len(every) > 30
    for method, path in every:
        stranger = client.request(method, path)
        assert stranger.status_code in (303, 401, 429), (method, path, stranger.status_code)
    context.failures.clear()  # the stranger's tries locked the address out
    viewer_csrf = log_in(client, "victor")
    changes = [(method, path) for method, path in every if method != "GET"]
    for method, path in changes:
        answer = client.request(method, path, headers={"X-CSRF-Token": viewer_csrf})
        assert answer.status_code == 403, (method, path, answer.status_code)
    log_in(client, "olga")
    for method, path in changes:
        answer = client.request(method, path)  # no CSRF token
        assert answer.status_code == 403, (method, path, answer.status_code)


def test_long_lists_are_paged_newest_first(client: TestClient, engine: Engine) -> None:
    first = a_job(engine, JobState.DELIVERED)
    for _ in range(100):
        a_job(engine, JobState.DELIVERED)
    log_in(client, "victor")
    newest = client.get("/partials/jobs?offset=0").text
    assert f'href="/jobs/{first}"' not in newest and "older →" in newest
    assert 'hx-get="/partials/jobs?offset=100' in client.get("/jobs?offset=100").text
    older = client.get("/partials/jobs?offset=100").text
    assert f'href="/jobs/{first}"' in older and "← newer" in older and "older →" not in older
    assert client.get("/partials/series?offset=-1").status_code == 422


def test_the_api_lists_filter_by_model_server_sender_modality_and_time(
    client: TestClient, engine: Engine
) -> None:
    from datetime import timedelta

    ct = a_job(engine, JobState.DELIVERED)
    mr = a_job(engine, JobState.FAILED)
    other = FINGERPRINT.model_copy(update={"model_human_readable_id": "mr-model"})
    with Session(engine) as session, session.begin():
        job = session.get_one(Job, mr)
        job.fingerprint, job.created_at = other, now() - timedelta(days=2)
        series = session.get_one(Series, job.series_id)
        series.modality, series.calling_ae_title = "MR", "MR_SCANNER"
        series.last_received_at = now() - timedelta(days=2)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def ids(path: str) -> list[int]:
        answer = client.get(path, headers=auth)
        assert answer.status_code == 200, answer.text
        return [row["id"] for row in answer.json()]

    assert ids("/api/v1/jobs?model=mr-model") == [mr]
    assert ids("/api/v1/jobs?model=ct-model&state=delivered") == [ct]
    assert ids("/api/v1/jobs?server=https://127.0.0.1:1/") == [mr, ct]
    assert ids("/api/v1/jobs?server=https://elsewhere/") == []
    yesterday = (now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert ids(f"/api/v1/jobs?since={yesterday}") == [ct]
    assert ids(f"/api/v1/jobs?until={yesterday}") == [mr]
    mr_series = client.get(f"/api/v1/jobs/{mr}", headers=auth).json()["series_ids"]
    assert ids("/api/v1/series?modality=MR") == mr_series
    assert ids("/api/v1/series?calling_ae_title=MR_SCANNER&modality=CT") == []
    assert len(ids(f"/api/v1/series?since={yesterday}")) == 1
    assert client.get("/api/v1/jobs?since=yesterday", headers=auth).status_code == 422


def test_pools_are_shown_and_an_operator_drains_and_resumes_a_member(
    context: WebContext, engine: Engine, tmp_path: Path
) -> None:
    known = Servers.model_validate({"servers": [
        {"name": "gpu-a", "url": "https://a:1", "models": ["ct-model"], "capacity": 2,
         "token": "secret-of-gpu-a"},
        {"name": "gpu-b", "url": "https://b:1", "api": 2, "models": ["ct-model"]},
    ]})  # fmt: skip
    app = create_app(replace(context, servers=lambda: known), tmp_path / "fingerprints")
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as client:
        victor = log_in(client, "victor")
        board = client.get("/partials/dashboard")
        assert 'id="pool"' in board.text and "gpu-a" in board.text
        assert 'id="drain-gpu-a"' not in board.text  # no buttons for a viewer
        assert client.post("/pool/gpu-a/drain", headers={"X-CSRF-Token": victor}).status_code == 403
        csrf = log_in(client, "olga")
        headers = {"X-CSRF-Token": csrf}
        assert 'id="drain-gpu-a"' in client.get("/partials/dashboard").text
        answer = client.post("/pool/gpu-a/drain", headers=headers)
        assert "gpu-a is drained: it gets no new jobs" in answer.text
        assert 'id="resume-gpu-a"' in client.get("/partials/dashboard").text
        listed = client.get("/api/v1/pool").json()
        assert [(s["name"], s["state"], s["capacity"]) for s in listed] == [
            ("gpu-a", "drained", 2),
            ("gpu-b", "up", 4),
        ]
        assert "secret-of-gpu-a" not in json.dumps(listed) + board.text
        resumed = client.post("/api/v1/pool/gpu-a/resume", headers=headers)
        assert resumed.json()["outcome"] == "gpu-a takes jobs again"
        assert client.post("/api/v1/pool/gpu-c/drain", headers=headers).status_code == 404
        assert client.post("/api/v1/pool/..%2Fx/drain", headers=headers).status_code in (404, 422)
        assert (
            "no server named &#39;nobody&#39;"
            in client.post("/pool/nobody/drain", headers=headers).text
        )


def test_a_waiting_job_says_why_on_its_page_and_in_the_api(
    client: TestClient, engine: Engine
) -> None:
    job_id = a_job(engine, JobState.WAITING)
    with Session(engine) as session, session.begin():
        session.get_one(
            Job, job_id
        ).waiting_for = "every server of its pool is full: gpu-a (1 of 1)"
    log_in(client, "victor")
    page = client.get(f"/jobs/{job_id}")
    assert 'id="waiting-for"' in page.text and "gpu-a (1 of 1)" in page.text
    assert client.get(f"/api/v1/jobs/{job_id}").json()["waiting_for"].startswith("every server")
