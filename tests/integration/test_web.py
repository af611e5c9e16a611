"""The HTTP side of a running relay: health without a token, metrics and the API with it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from isdr.app import Relay, build_relay
from isdr.db.models import Job
from isdr.demo.standin import StandIn
from isdr.synthetic import SeriesSpec, make_instance
from tests.helpers import dead_port, free_port, relay_settings, send_datasets
from tests.peers import Storescp

TOKEN = "a-token-of-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def start(tmp_path: Path, standin: StandIn) -> Iterator[Callable[..., tuple[Relay, httpx.Client]]]:
    running: list[tuple[Relay, httpx.Client]] = []

    def make(**overrides: Any) -> tuple[Relay, httpx.Client]:
        values: dict[str, Any] = {
            "HTTP_PORT": free_port(), "API_TOKEN": TOKEN, "CERT_FILE": standin.ca_file,
            "POST_AFTER": 1, "POST_INTERVAL": 0.2, "DELETE_ON_POST": False, "GET_INTERVAL": 0.2,
            **overrides,
        }  # fmt: skip
        relay = build_relay(relay_settings(tmp_path, **values))
        relay.start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{relay.settings.HTTP_PORT}", timeout=10)
        running.append((relay, client))
        return relay, client

    yield make
    for relay, client in running:
        client.close()
        relay.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_health_needs_no_token_and_everything_else_does(start: Any) -> None:
    _, client = start()
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"database": "ok", "receiver": "ok",
                                                      "disk": "ok"}}  # fmt: skip
    for path in ("/metrics", "/api/v1/series", "/api/v1/jobs", "/openapi.json"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=AUTH).status_code == 200, path
    assert (
        "/api/v1/jobs/{job_id}/retry" in client.get("/openapi.json", headers=AUTH).json()["paths"]
    )


def test_a_wrong_token_is_one_warning_with_the_address_and_guessing_is_slowed(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = start()
    wrong = {"Authorization": "Bearer not-the-token-at-all-000000"}
    with caplog.at_level(logging.WARNING, logger="isdr.web.auth"):
        answers = [client.get("/metrics", headers=wrong).status_code for _ in range(5)]
    assert answers == [401] * 5
    lines = [r.getMessage() for r in caplog.records if r.name == "isdr.web.auth"]
    assert len(lines) == 5 and all("from 127.0.0.1: wrong token" in line for line in lines)
    assert not any("not-the-token" in line for line in lines)
    # A sixth wrong one from that address is refused at once, for a minute; the right token
    # still passes (a client sharing the address is never locked out).
    slowed = client.get("/metrics", headers=wrong)
    assert slowed.status_code == 429 and slowed.headers["retry-after"] == "60"
    assert client.get("/metrics", headers=AUTH).status_code == 200
    # The address is the connection's: a forged X-Forwarded-For changes nothing.
    forged = {**wrong, "X-Forwarded-For": "10.9.8.7"}
    assert client.get("/metrics", headers=forged).status_code == 429


def test_without_a_token_set_only_health_is_served(start: Any) -> None:
    _, client = start(API_TOKEN="")
    refused = client.get("/api/v1/jobs", headers=AUTH)
    assert refused.status_code == 403 and "API_TOKEN" in refused.json()["detail"]
    assert client.get("/readyz").status_code == 200


def test_readyz_fails_naming_the_disk_when_its_reserve_is_crossed(start: Any) -> None:
    _, client = start(MIN_FREE_DISK_MB=10**9)
    answer = client.get("/readyz")
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert (checks["database"], checks["receiver"]) == ("ok", "ok")
    assert "MIN_FREE_DISK_MB" in checks["disk"]


def metric(text: str, name: str) -> float:
    """The value of one sample line (`name` with its labels, as Prometheus prints it)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics")


def test_the_metrics_and_the_api_follow_a_job_and_a_failed_job_is_retried(
    start: Any, standin: StandIn
) -> None:
    relay, client = start()
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ct.json").write_text(json.dumps({
        "modality_regex": "CT", "inference_server_url": standin.url_v1,
        "model_human_readable_id": "ct-model",
    }))  # fmt: skip
    relay.registry.reload()
    before = client.get("/metrics", headers=AUTH).text
    assert metric(before, 'isdr_jobs{state="submitted"}') == 0
    spec = SeriesSpec(modality="CT", count=3)
    datasets = [make_instance(spec, i, "1.2.826.0.1.3680043.10.9", "1.2.826.0.1.3680043.10.9.1")
                for i in range(3)]  # fmt: skip
    assert send_datasets(relay.scp.port, datasets, calling="CT_SCANNER") == [0, 0, 0]
    assert metric(before, "isdr_jobs_failed_total") == 0
    wait_for(
        lambda: 'isdr_jobs{state="delivered"} 1.0' in client.get("/metrics", headers=AUTH).text
    )
    text = client.get("/metrics", headers=AUTH).text
    assert metric(text, 'isdr_instances_received_total{calling_ae="CT_SCANNER"}') == 3
    assert metric(text, 'isdr_bytes_received_total{calling_ae="CT_SCANNER"}') > 3 * 8000
    assert metric(text, 'isdr_series{state="matched"}') == 1
    assert metric(text, 'isdr_job_stage_seconds_count{stage="waiting"}') == 1
    assert metric(text, "isdr_storage_free_bytes") > 0
    [series] = client.get("/api/v1/series", headers=AUTH).json()
    assert series["state"] == "matched" and series["instance_count"] == 3
    assert "patient_id" not in series  # no PatientID leaves through the API
    [job] = client.get("/api/v1/jobs", headers=AUTH).json()
    assert (job["series_ids"], job["model"]) == ([series["id"]], "ct-model")
    events = client.get("/api/v1/events?limit=5", headers=AUTH).json()
    assert len(events) == 5 and {e["job_id"] for e in events} == {job["id"]}
    assert events[0]["at"] >= events[-1]["at"]  # newest first
    detail = client.get(f"/api/v1/jobs/{job['id']}", headers=AUTH).json()
    assert detail["timeline"][0]["state"] == "pending"
    assert detail["deliveries"] == []  # the fingerprint names no destination
    kept = [(o["name"], o["dicom"]) for o in detail["outputs"] if not o["dicom"]]
    assert kept == [("mask.nii.gz", False)] and len(detail["outputs"]) == 3
    assert client.post(f"/api/v1/jobs/{job['id']}/retry", headers=AUTH).status_code == 409
    with Session(relay.engine) as session, session.begin():
        session.execute(update(Job).values(state="failed", failed_step="poll"))
    retried = client.post(f"/api/v1/jobs/{job['id']}/retry", headers=AUTH)
    assert retried.status_code == 200 and retried.json()["outcome"].startswith("submitted")
    assert client.get("/api/v1/jobs/999", headers=AUTH).status_code == 404
    assert client.get(f"/api/v1/jobs/{2**63}", headers=AUTH).status_code == 422
    assert client.get(f"/api/v1/series?offset={2**64}", headers=AUTH).status_code == 422
    assert client.get("/api/v1/jobs?state=nonsense", headers=AUTH).status_code == 422


def test_a_check_that_raises_is_a_failed_check_not_an_error(tmp_path: Path) -> None:
    from isdr.db.engine import make_engine, reader_engine
    from isdr.domain.clock import utcnow
    from isdr.web.app import create_app
    from isdr.web.context import Live, WebContext
    from isdr.web.server import WebServer
    from isdr.web.users import Users

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"

    def broken() -> str | None:
        raise OSError("INCOMING_DIR is gone")

    def gone() -> int:
        raise OSError("INCOMING_DIR is gone")

    context = WebContext(
        engine=make_engine(url), reader=reader_engine(url), token=TOKEN,
        checks={"disk": broken}, live=Live(free_bytes=gone, associations=lambda: 0),
        clock=utcnow, users=Users(tmp_path / "users.json"),
    )  # fmt: skip
    server = WebServer(create_app(context, tmp_path), "127.0.0.1", free_port())
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            answer = client.get("/readyz")
            text = client.get("/metrics", headers=AUTH).text
    finally:
        server.stop()
    assert answer.status_code == 503
    assert answer.json()["checks"] == {"disk": "the check failed (OSError)"}
    assert "isdr_associations_active 0.0" in text and "isdr_storage_free_bytes" not in text
    assert TOKEN not in repr(context)


def test_fingerprints_are_listed_checked_written_tried_and_removed(start: Any) -> None:
    relay, client = start()
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.json").write_text('{\n  "modality_regx": "CT"\n}\n')
    good = {"modality_regex": "CT", "inference_server_url": "https://is.example/api/tasks/",
            "model_human_readable_id": "ct-model"}  # fmt: skip
    typo = client.post(
        "/api/v1/fingerprints/validate", json={**good, "modalty_regex": "x"}, headers=AUTH
    )
    [problem] = typo.json()["problems"]
    assert typo.json()["valid"] is False and problem["field"] == "modalty_regex"
    assert "did you mean 'modality_regex'" in problem["message"] and problem["line"] == 5
    assert client.put("/api/v1/fingerprints/ct.json", json={**good, "max_wait": -1},
                      headers=AUTH).status_code == 422  # fmt: skip
    assert not (folder / "ct.json").exists()
    written = client.put("/api/v1/fingerprints/ct.json", json=good, headers=AUTH)
    assert written.status_code == 200 and written.json()["valid"] is True
    assert json.loads((folder / "ct.json").read_text()) == good
    listed = {f["name"]: f for f in client.get("/api/v1/fingerprints", headers=AUTH).json()}
    assert listed["ct.json"]["model"] == "ct-model"
    assert listed["broken.json"]["valid"] is False
    assert {"field": "modality_regx", "line": 2} in [
        {"field": p["field"], "line": p["line"]} for p in listed["broken.json"]["problems"]
    ]
    assert client.put("/api/v1/fingerprints/a b.json", json=good, headers=AUTH).status_code == 422
    assert client.put("/api/v1/fingerprints/..%2Fx.json", json=good,
                      headers=AUTH).status_code in (404, 422)  # fmt: skip
    assert list(folder.parent.glob("x.json")) == []
    # A dry run against the study of a received CT: the draft waits for an MR in vain.
    spec = SeriesSpec(modality="CT", count=3)
    datasets = [make_instance(spec, i, "1.2.826.0.1.3680043.10.8", "1.2.826.0.1.3680043.10.8.1")
                for i in range(3)]  # fmt: skip
    send_datasets(relay.scp.port, datasets)
    [series] = client.get("/api/v1/series", headers=AUTH).json()
    draft = {**{k: v for k, v in good.items() if k != "modality_regex"},
             "triggers": [{"name": "CT", "modality_regex": "CT"},
                          {"name": "MR", "modality_regex": "MR"}]}  # fmt: skip
    tried = client.post(f"/api/v1/fingerprints/dry-run/{series['id']}", json=draft, headers=AUTH)
    lines = tried.json()["lines"]
    assert f"    trigger 'CT': series {series['id']}" in lines
    assert "    no     draft.json: not matched: no series for trigger 'MR'" in lines
    assert client.delete("/api/v1/fingerprints/ct.json", headers=AUTH).status_code == 204
    assert not (folder / "ct.json").exists()
    assert client.delete("/api/v1/fingerprints/ct.json", headers=AUTH).status_code == 404
    assert client.delete("/api/v1/fingerprints/ct.json").status_code == 401


def test_the_heartbeat_says_which_inference_servers_answer(start: Any, standin: StandIn) -> None:
    relay, client = start(HEARTBEAT_INTERVAL=3600)  # ticked by hand below
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with dead_port() as port:
        dead = f"https://localhost:{port}/api/tasks/"
        for name, url, api in (("live.json", standin.url_v2, 2), ("dead.json", dead, 1)):
            (folder / name).write_text(json.dumps({
                "modality_regex": "CT", "inference_server_url": url,
                "inference_server_api": api, "model_human_readable_id": "ct-model",
            }))  # fmt: skip
        relay.registry.reload()
        assert relay.heartbeat is not None
        relay.heartbeat.tick()
    servers = {s["api"]: s for s in client.get("/api/v1/servers", headers=AUTH).json()}
    live, down = servers[2], servers[1]
    assert live["url"].startswith(standin.url_v2) and down["url"] == dead
    assert live["up"] is True and "as generation 2 does" in live["detail"]
    assert live["up_since"] is not None
    assert down["up"] is False and down["up_since"] is None and down["detail"]
    text = client.get("/metrics", headers=AUTH).text
    assert metric(text, f'isdr_inference_server_up{{api="2",server="{live["url"]}"}}') == 1
    assert metric(text, f'isdr_inference_server_up{{api="1",server="{dead}"}}') == 0


@pytest.mark.usefixtures("dcmtk")
def test_destinations_are_listed_and_c_echoed_on_request(start: Any, tmp_path: Path) -> None:
    relay, client = start()
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pacs = Storescp(tmp_path / "pacs").start()  # dcmtk's storescp answers C-ECHO
    try:
        with dead_port() as port:
            scus = [
                {"scu_ip": "127.0.0.1", "scu_port": pacs.port, "scu_ae_title": pacs.ae_title},
                {"scu_ip": "127.0.0.1", "scu_port": port, "scu_ae_title": "NOBODY"},
            ]
            (folder / "ct.json").write_text(json.dumps({
                "modality_regex": "CT", "inference_server_url": "https://is.example/api/tasks/",
                "model_human_readable_id": "ct-model", "scus": scus,
            }))  # fmt: skip
            relay.registry.reload()
            listed = client.get("/api/v1/destinations", headers=AUTH).json()
            up = client.post("/api/v1/destinations/ct.json/0/echo", headers=AUTH).json()
            down = client.post("/api/v1/destinations/ct.json/1/echo", headers=AUTH).json()
    finally:
        pacs.stop()
    assert [d["destination"] for d in listed] == [
        f"{pacs.ae_title}@127.0.0.1:{pacs.port}", f"NOBODY@127.0.0.1:{port}",
    ]  # fmt: skip
    assert up["ok"] is True
    assert down["ok"] is False and "connection refused" in down["detail"]
    missing = client.post("/api/v1/destinations/ct.json/5/echo", headers=AUTH)
    assert missing.status_code == 404
    assert client.post("/api/v1/destinations/ct.json/0/echo").status_code == 401
