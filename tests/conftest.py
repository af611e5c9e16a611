"""Fixtures: a relay running in this process on a free loopback port."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from isdr.app import Relay, build_relay
from isdr.demo.standin import StandIn
from tests.helpers import relay_settings

# The HTTP side is off in every relay a test makes, in this process or as `isdr serve`
# (which inherits the environment), unless the test asks for it: two relays of two tests
# must not meet on HTTP_PORT's default.
os.environ["HTTP_PORT"] = "0"
# Nor does a relay ask its InferenceServers for heartbeats unless the test asks: a stand-in
# counting polls, or serving a sequence of answers, must see the relay's polls only.
os.environ["HEARTBEAT_INTERVAL"] = "0"


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
