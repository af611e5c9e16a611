"""Predictions back to whoever sent the series: `{"sender": true}` and SENDERS_FILE, with a
real relay, the stand-in InferenceServer and two senders, each with its own Store SCP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from isdr.app import Relay, build_relay
from isdr.db.delivery import retry_failed
from isdr.db.jobs import list_jobs
from isdr.demo.standin import StandIn
from isdr.domain.clock import utcnow
from isdr.synthetic import SeriesSpec, make_instance, write_series
from tests.helpers import relay_settings, send_datasets
from tests.peers import RecordingSCP


@pytest.fixture
def relay(tmp_path: Path, standin: StandIn) -> Iterator[Relay]:
    running = build_relay(relay_settings(
        tmp_path, CERT_FILE=standin.ca_file, POST_AFTER=1, POST_INTERVAL=0.2,
        GET_INTERVAL=0.2, DELIVERY_RETRY_DELAY=0.2,
    ))  # fmt: skip
    folder = running.settings.FINGERPRINT_DIR
    folder.mkdir(parents=True)
    (folder / "ct.json").write_text(json.dumps({
        "modality_regex": "CT", "inference_server_url": standin.url_v1,
        "model_human_readable_id": "ct-model", "scus": [{"sender": True}],
    }))  # fmt: skip
    running.start()
    yield running
    running.stop()


def know(relay: Relay, scanners: dict[str, RecordingSCP], *titles: str) -> None:
    senders = [{"ae_title": t, "host": "127.0.0.1", "port": scanners[t].port} for t in titles]
    relay.settings.SENDERS_FILE.write_text(json.dumps({"senders": senders}))


def send(relay: Relay, calling: str, study: str) -> None:
    spec = SeriesSpec(modality="CT", count=3)
    datasets = [make_instance(spec, i, study, f"{study}.1") for i in range(3)]
    assert send_datasets(relay.scp.port, datasets, calling=calling) == [0, 0, 0]


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def job_of(relay: Relay, state: str) -> list[int]:
    return [job.id for job in list_jobs(relay.engine, state=state)]


def test_each_sender_gets_its_own_predictions_and_an_unknown_one_none_until_known(
    relay: Relay, scanners: dict[str, RecordingSCP]
) -> None:
    know(relay, scanners, "CT_A")
    send(relay, "CT_A", "1.2.826.0.1.3680043.10.501")
    send(relay, "CT_B", "1.2.826.0.1.3680043.10.502")
    wait_for(lambda: len(job_of(relay, "delivered")) == 1 and len(job_of(relay, "failed")) == 1)
    assert len(scanners["CT_A"].received) == 2 and scanners["CT_B"].received == []
    [failed] = list_jobs(relay.engine, state="failed")
    assert "the sender CT_B (from 127.0.0.1): it is not in SENDERS_FILE" in failed.last_error
    # the file is fixed, the job retried: the sender is looked up again
    know(relay, scanners, "CT_A", "CT_B")
    assert retry_failed(relay.engine, failed.id, utcnow()) is not None
    wait_for(lambda: len(job_of(relay, "delivered")) == 2)
    assert len(scanners["CT_B"].received) == 2 and len(scanners["CT_A"].received) == 2


def test_a_known_title_calling_from_another_address_gets_nothing(
    relay: Relay, scanners: dict[str, RecordingSCP]
) -> None:
    senders = [{"ae_title": "CT_A", "host": "10.255.0.1", "port": scanners["CT_A"].port}]
    relay.settings.SENDERS_FILE.write_text(json.dumps({"senders": senders}))
    send(relay, "CT_A", "1.2.826.0.1.3680043.10.503")
    wait_for(lambda: len(job_of(relay, "failed")) == 1)
    [failed] = list_jobs(relay.engine, state="failed")
    assert "called from 127.0.0.1, but SENDERS_FILE has it at 10.255.0.1" in failed.last_error
    assert scanners["CT_A"].received == []


def test_a_broken_senders_file_sends_to_no_sender(
    relay: Relay, scanners: dict[str, RecordingSCP]
) -> None:
    relay.settings.SENDERS_FILE.write_text('{"senders": [{"ae_title": "CT_A"}]}')
    send(relay, "CT_A", "1.2.826.0.1.3680043.10.504")
    wait_for(lambda: len(job_of(relay, "failed")) == 1)
    [failed] = list_jobs(relay.engine, state="failed")
    assert "SENDERS_FILE cannot be used" in failed.last_error and "senders.0.host" in (
        failed.last_error
    )


def test_a_series_two_senders_sent_parts_of_goes_back_to_neither(
    relay: Relay, scanners: dict[str, RecordingSCP]
) -> None:
    know(relay, scanners, "CT_A", "CT_B")
    study = "1.2.826.0.1.3680043.10.505"
    spec = SeriesSpec(modality="CT", count=4)
    datasets = [make_instance(spec, i, study, f"{study}.1") for i in range(4)]
    assert send_datasets(relay.scp.port, datasets[:2], calling="CT_A") == [0, 0]
    assert send_datasets(relay.scp.port, datasets[2:], calling="CT_B") == [0, 0]
    wait_for(lambda: len(job_of(relay, "failed")) == 1)
    [failed] = list_jobs(relay.engine, state="failed")
    assert "came from several senders" in failed.last_error
    assert scanners["CT_A"].received == [] and scanners["CT_B"].received == []


def test_placed_files_have_no_sender_even_with_the_fallback(
    tmp_path: Path, standin: StandIn, scanners: dict[str, RecordingSCP]
) -> None:
    settings = relay_settings(
        tmp_path, CERT_FILE=standin.ca_file, POST_AFTER=1, POST_INTERVAL=0.2,
        GET_INTERVAL=0.2, SENDER_FALLBACK_PORT=scanners["CT_A"].port,
    )  # fmt: skip
    settings.FINGERPRINT_DIR.mkdir(parents=True)
    (settings.FINGERPRINT_DIR / "ct.json").write_text(json.dumps({
        "modality_regex": "CT", "inference_server_url": standin.url_v1,
        "model_human_readable_id": "ct-model", "scus": [{"sender": True}],
    }))  # fmt: skip
    running = build_relay(settings)
    running.start()
    try:
        write_series(settings.INCOMING_DIR / "dropped", SeriesSpec(modality="CT", count=3))
        wait_for(lambda: len(job_of(running, "failed")) == 1)
        [failed] = list_jobs(running.engine, state="failed")
        assert "placed in INCOMING_DIR" in failed.last_error
        assert scanners["CT_A"].received == []
    finally:
        running.stop()
