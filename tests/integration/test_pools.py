"""Pools of InferenceServers (SERVERS_FILE): a real relay, two stand-in servers of two
generations in one pool, and senders that get their own predictions back."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from isdr.app import Relay, build_relay
from isdr.db.delivery import output_files
from isdr.db.jobs import job_senders, list_jobs
from isdr.db.pool import set_drained, statuses
from isdr.db.views import JobView
from isdr.demo.standin import StandIn
from isdr.domain.clock import utcnow
from isdr.synthetic import SeriesSpec, make_instance
from tests.helpers import relay_settings, send_datasets
from tests.peers import RecordingSCP

STUDY = "1.2.826.0.1.3680043.10.77"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, StandIn]]:
    found = {}
    for name in ("gpu-a", "gpu-b"):
        (tmp_path / name).mkdir()
        found[name] = StandIn(tmp_path / name, models=("ct-model",)).start()
        found[name].polls_before_ready = 1
    yield found
    for server in found.values():
        server.stop()


def start_relay(
    tmp_path: Path,
    pair: dict[str, StandIn],
    scanners: dict[str, RecordingSCP],
    servers: list[dict[str, Any]],
    **settings: Any,
) -> Relay:
    bundle = tmp_path / "cas.pem"
    bundle.write_text("".join(s.ca_file.read_text() for s in pair.values()))
    values = {"CERT_FILE": bundle, "POST_AFTER": 1, "POST_INTERVAL": 0.2, "GET_INTERVAL": 0.2,
              "DELIVERY_RETRY_DELAY": 0.2, "POST_RETRY_DELAY": 0.5} | settings  # fmt: skip
    relay = build_relay(relay_settings(tmp_path, **values))
    relay.settings.SERVERS_FILE.write_text(json.dumps({"servers": servers}))
    folder = relay.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True)
    (folder / "ct.json").write_text(json.dumps({
        "modality_regex": "CT", "model_human_readable_id": "ct-model",
        "scus": [{"sender": True}],
    }))  # fmt: skip
    know(relay, scanners)
    relay.start()
    return relay


def member(pair: dict[str, StandIn], name: str, api: int, **more: Any) -> dict[str, Any]:
    server = pair[name]
    url = server.url_v1 if api == 1 else server.url_v2
    return {"name": name, "url": url, "api": api, "models": ["ct-model"]} | more


def know(relay: Relay, scanners: dict[str, RecordingSCP]) -> None:
    senders = [{"ae_title": t, "host": "127.0.0.1", "port": s.port} for t, s in scanners.items()]
    relay.settings.SENDERS_FILE.write_text(json.dumps({"senders": senders}))


def send(relay: Relay, study: str, series: int, calling: str = "CT_A") -> None:
    spec = SeriesSpec(modality="CT", count=2)
    datasets = [make_instance(spec, i, study, f"{study}.{series}") for i in range(2)]
    assert send_datasets(relay.scp.port, datasets, calling=calling) == [0, 0]


def wait_for(
    condition: Callable[[], bool], timeout: float = 60, relay: Relay | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            states = Counter(job.state for job in jobs(relay)) if relay else {}
            open_jobs = [j for j in jobs(relay) if j.state != "delivered"] if relay else []
            stuck = [(j.id, j.state, j.server_name, j.last_error[:120], j.waiting_for)
                     for j in open_jobs[:10]]  # fmt: skip
            raise AssertionError(f"condition not met in time: {dict(states)} {stuck}")
        time.sleep(0.1)


def jobs(relay: Relay, state: str | None = None) -> list[JobView]:
    return list_jobs(relay.engine, state=state)


def study_of(relay: Relay, job: JobView) -> str:
    from isdr.db.series import get_series

    found = get_series(relay.engine, job.series_id)
    assert found is not None
    return found.study_instance_uid


def test_studies_stay_on_one_member_shares_follow_the_weights_and_senders_get_their_own(
    tmp_path: Path, pair: dict[str, StandIn], scanners: dict[str, RecordingSCP]
) -> None:
    relay = start_relay(tmp_path, pair, scanners, [
        member(pair, "gpu-a", 1, weight=2, capacity=50),
        member(pair, "gpu-b", 2, weight=1, capacity=50),
    ])  # fmt: skip
    try:
        studies = [f"{STUDY}.{n}" for n in range(1, 21)]
        for n, study in enumerate(studies):
            send(relay, study, 1, "CT_A" if n % 2 else "CT_B")
        for n, study in enumerate(studies):
            send(relay, study, 2, "CT_A" if n % 2 else "CT_B")
        wait_for(lambda: len(jobs(relay, "delivered")) == 40, timeout=240, relay=relay)
        done = jobs(relay)
        by_study: dict[str, set[str | None]] = {}
        for job in done:
            by_study.setdefault(study_of(relay, job), set()).add(job.server_name)
        assert all(len(names) == 1 for names in by_study.values()), by_study
        shares = Counter(next(iter(names)) for names in by_study.values())
        assert 11 <= shares["gpu-a"] <= 16 and shares["gpu-a"] + shares["gpu-b"] == 20, shares
        # both generations served: each member's archives in its own format
        assert pair["gpu-a"].submissions and pair["gpu-b"].submissions
        for title, scanner in scanners.items():
            expected = set()
            for job in done:
                if {sent.ae_title for sent in job_senders(relay.engine, job.id)} == {title}:
                    expected |= {f.sop_instance_uid for f in output_files(relay.engine, job.id)
                                 if f.is_dicom}  # fmt: skip
            assert sorted(scanner.received) == sorted(expected) and expected
    finally:
        relay.stop()


def test_a_drained_member_finishes_its_jobs_and_gets_no_new_one(
    tmp_path: Path, pair: dict[str, StandIn], scanners: dict[str, RecordingSCP]
) -> None:
    relay = start_relay(
        tmp_path,
        pair,
        scanners,
        [member(pair, "gpu-a", 1, capacity=20), member(pair, "gpu-b", 1, capacity=20)],
    )
    try:
        pair["gpu-a"].polls_before_ready = pair["gpu-b"].polls_before_ready = 10**6
        for n in range(1, 5):
            send(relay, f"{STUDY}.{n}", 1)
        wait_for(lambda: len(jobs(relay, "submitted")) == 4)
        on_a = {job.id for job in jobs(relay) if job.server_name == "gpu-a"}
        assert on_a
        servers = relay.servers.current().servers if relay.servers else []
        assert "drained" in set_drained(relay.engine, servers, "gpu-a", True, utcnow())
        for n in range(5, 11):
            send(relay, f"{STUDY}.{n}", 1)
        wait_for(lambda: len(jobs(relay, "submitted")) == 10)
        later = [job for job in jobs(relay) if job.id not in on_a and job.server_name == "gpu-a"]
        assert later == []
        pair["gpu-a"].polls_before_ready = pair["gpu-b"].polls_before_ready = 1
        wait_for(lambda: len(jobs(relay, "delivered")) == 10)
        [a] = [s for s in statuses(relay.engine, servers) if s.name == "gpu-a"]
        assert a.state == "drained" and a.in_flight == 0
    finally:
        relay.stop()


def test_a_stopped_member_loses_its_queued_jobs_to_the_other_and_keeps_those_it_accepted(
    tmp_path: Path,
    pair: dict[str, StandIn],
    scanners: dict[str, RecordingSCP],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="isdr")
    relay = start_relay(
        tmp_path, pair, scanners, [member(pair, "gpu-a", 2), member(pair, "gpu-b", 1)],
        HEARTBEAT_INTERVAL=0.3, SERVER_DOWN_AFTER=2,
    )  # fmt: skip
    try:
        pair["gpu-a"].polls_before_ready = pair["gpu-b"].polls_before_ready = 10**6
        for n in range(1, 5):  # the first series of four studies: two on each member
            send(relay, f"{STUDY}.{n}", 1)
        wait_for(lambda: len(jobs(relay, "submitted")) == 4)
        accepted = [job for job in jobs(relay) if job.server_name == "gpu-a"]
        assert len(accepted) == 2
        pair["gpu-b"].polls_before_ready = 1
        pair["gpu-a"].close()
        wait_for(lambda: "InferenceServer gpu-a is down" in caplog.text)
        for n in range(1, 5):  # their second series: gpu-a held two of these studies
            send(relay, f"{STUDY}.{n}", 2)
        wait_for(lambda: len(jobs(relay, "delivered")) == 6)
        assert {job.state for job in jobs(relay) if job.id in {j.id for j in accepted}} == {
            "submitted"
        }
        moved = [job for job in jobs(relay, "delivered") if job.server_name == "gpu-b"]
        assert len(moved) == 6  # every job but those gpu-a accepted
        pair["gpu-a"].polls_before_ready = 1
        pair["gpu-a"].reopen()
        wait_for(lambda: len(jobs(relay, "delivered")) == 8)
        assert "InferenceServer gpu-a answers again" in caplog.text
    finally:
        relay.stop()


def test_a_member_answering_500_to_every_submit_is_taken_out_and_the_pool_carries_on(
    tmp_path: Path,
    pair: dict[str, StandIn],
    scanners: dict[str, RecordingSCP],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="isdr")
    relay = start_relay(
        tmp_path, pair, scanners, [member(pair, "gpu-a", 1), member(pair, "gpu-b", 1)],
        SERVER_DOWN_AFTER=2, POST_RETRY_DELAY=0.2,
    )  # fmt: skip
    try:
        pair["gpu-a"].behaviours.extend(["500"] * 50)
        for n in range(1, 9):
            send(relay, f"{STUDY}.{n}", 1)
        wait_for(lambda: len(jobs(relay, "delivered")) == 8)
        assert 50 - len(pair["gpu-a"].behaviours) <= 2  # two failed submits, then out
        assert "InferenceServer gpu-a is down: 2 submits failed in a row" in caplog.text
        assert all(job.server_name == "gpu-b" for job in jobs(relay))
    finally:
        relay.stop()


def test_a_job_waits_visibly_while_every_member_is_full(
    tmp_path: Path, pair: dict[str, StandIn], scanners: dict[str, RecordingSCP]
) -> None:
    relay = start_relay(
        tmp_path,
        pair,
        scanners,
        [member(pair, "gpu-a", 1, capacity=1), member(pair, "gpu-b", 2, capacity=1)],
    )
    try:
        pair["gpu-a"].polls_before_ready = pair["gpu-b"].polls_before_ready = 10**6
        for n in range(1, 4):
            send(relay, f"{STUDY}.{n}", 1)
        wait_for(lambda: len(jobs(relay, "waiting")) == 1 and len(jobs(relay, "submitted")) == 2)
        [waiting] = jobs(relay, "waiting")
        assert waiting.waiting_for is not None
        assert "every server of its pool is full: gpu-a (1 of 1), gpu-b (1 of 1)" in (
            waiting.waiting_for
        )
        pair["gpu-a"].polls_before_ready = pair["gpu-b"].polls_before_ready = 1
        wait_for(lambda: len(jobs(relay, "delivered")) == 3)
    finally:
        relay.stop()


def test_a_member_that_refuses_the_model_loses_the_jobs_to_the_other_not_the_jobs(
    tmp_path: Path,
    pair: dict[str, StandIn],
    scanners: dict[str, RecordingSCP],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="isdr")
    pair["gpu-a"].models = {"another-model"}  # it lists ct-model in the file, yet answers 550
    relay = start_relay(
        tmp_path, pair, scanners, [member(pair, "gpu-a", 1), member(pair, "gpu-b", 1)],
        SERVER_DOWN_AFTER=2, POST_RETRY_DELAY=0.2,
    )  # fmt: skip
    try:
        for n in range(1, 6):
            send(relay, f"{STUDY}.{n}", 1)
        wait_for(lambda: len(jobs(relay, "delivered")) == 5)
        assert all(job.server_name == "gpu-b" for job in jobs(relay))
        assert "InferenceServer gpu-a is down: 2 submits failed in a row" in caplog.text
        assert len(pair["gpu-a"].submissions) == 0  # refused, never accepted
    finally:
        relay.stop()
