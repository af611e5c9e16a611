"""Fixtures: a relay running in this process on a free loopback port."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from isdr.app import Relay, build_relay
from isdr.demo.standin import StandIn
from tests.helpers import relay_settings


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    running = build_relay(relay_settings(tmp_path))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    server = StandIn(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def dcmtk() -> None:
    if shutil.which("storescu") is None:
        pytest.fail("dcmtk is not installed (apt-get install -y dcmtk)")
