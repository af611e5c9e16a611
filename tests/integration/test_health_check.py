"""`isdr echo`, the container's health check, against a real relay: it passes behind the
allow-lists, says why when it fails, and leaves nothing in the relay's log at INFO."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from isdr.app import Relay
from isdr.domain.access import HEALTH_CHECK_AE_TITLE
from isdr.scu.echo import echo
from isdr.synthetic import SeriesSpec, make_instance
from tests.helpers import dead_port, send_datasets
from tests.integration.conftest import relays

SERVER_LOG = "isdr.scp.server"


@pytest.fixture
def make_relay(tmp_path: Path) -> Iterator[Callable[..., Relay]]:
    with relays(tmp_path) as make:
        yield make


def test_the_health_check_passes_when_only_a_pacs_elsewhere_may_send(
    make_relay: Callable[..., Relay],
) -> None:
    relay = make_relay(ALLOWED_CALLING_AE_TITLES="PACS", ALLOWED_PEERS="10.0.0.0/8")
    answer = echo("0.0.0.0", relay.scp.port, "ISDR_TEST")
    assert answer.ok, answer.detail


def test_the_health_checks_ae_title_may_not_open_a_storage_association(
    make_relay: Callable[..., Relay],
) -> None:
    relay = make_relay(ALLOWED_CALLING_AE_TITLES="PACS", ALLOWED_PEERS="10.0.0.0/8")
    ae = AE(ae_title=HEALTH_CHECK_AE_TITLE)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", relay.scp.port, ae_title="ISDR_TEST")
    assert assoc.is_rejected


def test_a_health_check_writes_nothing_to_the_log_above_debug(
    make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = make_relay()
    caplog.set_level(logging.DEBUG, logger=SERVER_LOG)
    caplog.clear()  # the start's own lines
    assert echo("127.0.0.1", relay.scp.port, "ISDR_TEST").ok
    wait_for(lambda: any("closed" in r.getMessage() for r in caplog.records))
    server_lines = [r for r in caplog.records if r.name == SERVER_LOG]
    assert [r.getMessage() for r in server_lines if r.levelno >= logging.INFO] == []


def test_an_association_that_stores_is_still_logged_at_info(
    make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = make_relay()
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    instance = make_instance(SeriesSpec(count=1), 0, "1.2.826.0.9.1", "1.2.826.0.9.1.1")
    assert send_datasets(relay.scp.port, [instance]) == [0]
    wait_for(lambda: any("1 stored" in r.getMessage() for r in caplog.records))
    assert any("accepted" in r.getMessage() for r in caplog.records)


def test_a_rejected_echo_says_result_source_and_reason(
    make_relay: Callable[..., Relay],
) -> None:
    relay = make_relay(REQUIRE_CALLED_AE_TITLE=True)
    answer = echo("127.0.0.1", relay.scp.port, "NOT_THE_RELAY")
    assert not answer.ok
    assert (
        "A-ASSOCIATE-RJ: Rejected Permanent, source Service User, "
        "reason: Called AE title not recognised" in answer.detail
    )


def test_an_echo_to_a_port_nobody_listens_on_says_connection_refused() -> None:
    with dead_port() as port:
        answer = echo("127.0.0.1", port, "ANY")
    assert not answer.ok and "connection refused" in answer.detail


def test_an_echo_to_a_node_that_never_answers_says_it_timed_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        answer = echo("127.0.0.1", silent.getsockname()[1], "ANY", timeout=1)
    assert not answer.ok and "within 1 s (timeout)" in answer.detail


def test_an_echo_over_tls_to_a_plain_relay_says_the_handshake_failed(
    make_relay: Callable[..., Relay],
) -> None:
    relay = make_relay()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    answer = echo("127.0.0.1", relay.scp.port, "ISDR_TEST", timeout=2, tls=context)
    assert not answer.ok and "TLS handshake failed" in answer.detail


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
