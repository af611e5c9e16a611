"""Who may send: allow-lists and the called AE title, checked with real associations."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from isdr.app import Relay
from tests.integration.conftest import relays


@pytest.fixture
def make_relay(tmp_path: Path) -> Iterator[Callable[..., Relay]]:
    with relays(tmp_path) as make:
        yield make


class Attempt:
    """How an association request ended."""

    def __init__(self, assoc: Any) -> None:
        self.is_established = bool(assoc.is_established)
        self.is_rejected = bool(assoc.is_rejected)
        self.acceptor = assoc.acceptor


def associate(relay: Relay, calling: str = "GOOD", called: str = "ISDR_TEST") -> Attempt:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", relay.scp.port, ae_title=called)
    attempt = Attempt(assoc)
    if assoc.is_established:
        assoc.release()
    return attempt


def rejection(assoc: Any) -> tuple[int, int, int]:
    primitive = assoc.acceptor.primitive
    return int(primitive.result), int(primitive.result_source), int(primitive.diagnostic)


def test_anyone_may_send_when_no_list_is_set(make_relay: Callable[..., Relay]) -> None:
    assert associate(make_relay(), calling="ANYONE", called="ANYTHING").is_established


def test_a_calling_ae_title_not_on_the_list_is_rejected_with_that_reason(
    make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = make_relay(ALLOWED_CALLING_AE_TITLES="GOOD, ALSO_GOOD")
    caplog.set_level(logging.WARNING, logger="isdr.scp.server")
    refused = associate(relay, calling="INTRUDER")
    assert refused.is_rejected and rejection(refused) == (1, 1, 3)
    assert associate(relay, calling="ALSO_GOOD").is_established
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "127.0.0.1" in line and "INTRUDER" in line


def test_an_address_outside_the_allowed_networks_is_rejected(
    make_relay: Callable[..., Relay],
) -> None:
    refused = associate(make_relay(ALLOWED_PEERS="10.0.0.0/8, 192.168.1.7"))
    assert refused.is_rejected and rejection(refused) == (1, 1, 1)


def test_an_address_inside_the_allowed_networks_is_accepted(
    make_relay: Callable[..., Relay],
) -> None:
    assert associate(make_relay(ALLOWED_PEERS="10.0.0.0/8,127.0.0.0/8")).is_established


def test_a_wrong_called_ae_title_is_rejected_only_when_required(
    make_relay: Callable[..., Relay], tmp_path: Path
) -> None:
    strict = make_relay(REQUIRE_CALLED_AE_TITLE=True)
    refused = associate(strict, called="SOMEONE_ELSE")
    assert refused.is_rejected and rejection(refused) == (1, 1, 7)
    assert associate(strict, called="ISDR_TEST").is_established
