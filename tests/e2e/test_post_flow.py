"""End to end: dcmtk storescu -> `isdr serve` -> the stand-in InferenceServer over HTTPS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from isdr.config import Settings
from isdr.demo.standin import StandIn
from isdr.synthetic import SeriesSpec, write_series
from tests.e2e.test_serve import start_relay
from tests.helpers import relay_env, relay_settings

pytestmark = pytest.mark.usefixtures("dcmtk")
ISDR = [sys.executable, "-m", "isdr"]


@pytest.fixture
def settings(tmp_path: Path, standin: StandIn) -> Settings:
    return relay_settings(
        tmp_path, CERT_FILE=standin.ca_file, POST_AFTER=1, POST_INTERVAL=0.2, DELETE_ON_POST=True
    )


@pytest.fixture
def relay(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    settings.FINGERPRINT_DIR.mkdir(parents=True, exist_ok=True)
    process = start_relay(settings, tmp_path / "relay.log")
    yield process
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)


def write_fingerprint(settings: Settings, name: str, **fields: Any) -> None:
    temp = settings.FINGERPRINT_DIR / f".{name}.tmp"
    temp.write_text(json.dumps(fields, indent=2))
    temp.rename(settings.FINGERPRINT_DIR / name)


def storescu(settings: Settings, files: list[Path]) -> None:
    subprocess.run(
        [
            "storescu",
            "-aec",
            settings.SCP_AE_TITLE,
            "127.0.0.1",
            str(settings.SCP_PORT),
            *map(str, files),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        check=True,
        capture_output=True,
        timeout=60,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_a_ct_and_an_mr_series_reach_their_models_in_their_layouts(
    settings: Settings, standin: StandIn, relay: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    write_fingerprint(
        settings,
        "ct.json",
        modality_regex="^CT$",
        model_human_readable_id="ct-model",
        inference_server_url=standin.url_v1,
    )
    write_fingerprint(
        settings,
        "mr.json",
        modality_regex="^MR$",
        model_human_readable_id="mr-model",
        inference_server_url=standin.url_v2,
        inference_server_api=2,
    )
    time.sleep(1)  # the reload is logged within 2 s
    ct = write_series(tmp_path / "ct", SeriesSpec(modality="CT", count=5))
    mr = write_series(tmp_path / "mr", SeriesSpec(modality="MR", count=7))
    storescu(settings, ct + mr)
    wait_for(lambda: len(standin.submissions) == 2)
    time.sleep(1)
    by_model = {s.model: s for s in standin.submissions}
    assert len(standin.submissions) == 2
    assert (by_model["ct-model"].api, len(by_model["ct-model"].members)) == (1, 5)
    assert (by_model["mr-model"].api, len(by_model["mr-model"].members)) == (2, 7)
    assert all(m.count("/") == 2 for m in by_model["mr-model"].members)
    env = {**os.environ, **relay_env(settings)}
    wait_for(lambda: "submitted" in _jobs(env))
    listing = _jobs(env)
    assert listing.count("submitted") == 2 and "ct-model" in listing and "mr-model" in listing


def _jobs(env: dict[str, str]) -> str:
    return subprocess.run(
        [*ISDR, "jobs"], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_a_fingerprint_dropped_in_while_running_is_used_and_a_broken_one_harms_nothing(
    settings: Settings, standin: StandIn, relay: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    write_fingerprint(
        settings,
        "ct.json",
        modality_regex="CT",
        model_human_readable_id="ct-model",
        inference_server_url=standin.url_v1,
    )
    (settings.FINGERPRINT_DIR / "broken.json").write_text('{"modality_regex": "CT",}')
    time.sleep(2)
    storescu(settings, write_series(tmp_path / "ct", SeriesSpec(modality="CT", count=2)))
    wait_for(lambda: len(standin.submissions) == 1)
    log = (tmp_path / "relay.log").read_text()
    assert "broken.json:1:" in log and "1 fingerprint(s) loaded (ct.json)" in log
