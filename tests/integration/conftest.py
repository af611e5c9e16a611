"""Fixtures of the flow tests: a relay in this process, with fast timers, and storescp."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from isdr.app import Relay, build_relay
from isdr.demo.standin import StandIn
from tests.helpers import relay_settings
from tests.peers import RecordingSCP, Storescp

FAST = {
    "POST_AFTER": 0.3,
    "POST_INTERVAL": 0.1,
    "GET_INTERVAL": 0.1,
    "DELIVERY_RETRY_DELAY": 0.5,
    "DELIVERY_TIMEOUT": 3,
}


@contextmanager
def relays(tmp_path: Path, **defaults: Any) -> Iterator[Callable[..., Relay]]:
    """A maker of started relays (settings: `defaults`, then the call's own), each stopped
    at the end."""
    started: list[Relay] = []

    def make(**overrides: Any) -> Relay:
        relay = build_relay(relay_settings(tmp_path, **{**defaults, **overrides}))
        relay.start()
        started.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in started:
            relay.stop()


@pytest.fixture
def make_relay(tmp_path: Path, standin: StandIn) -> Iterator[Callable[..., Relay]]:
    """Relays with fast timers that trust the stand-in's certificate."""
    with relays(tmp_path, CERT_FILE=standin.ca_file, **FAST) as make:
        yield make


@pytest.fixture
def storescp(tmp_path: Path, dcmtk: None) -> Iterator[Storescp]:
    destination = Storescp(tmp_path / "pacs").start()
    yield destination
    destination.stop()


@pytest.fixture
def scanners() -> Iterator[dict[str, RecordingSCP]]:
    """Two senders' own Store SCPs, CT_A and CT_B, where predictions go back to."""
    running = {title: RecordingSCP(title).start() for title in ("CT_A", "CT_B")}
    yield running
    for scp in running.values():
        scp.stop()
