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


def _series(env: dict[str, str]) -> str:
    return subprocess.run(
        [*ISDR, "series"], env=env, capture_output=True, text=True, check=True
    ).stdout


def _ct_and_mr(folder: Path, study: str, *, mr: bool = True) -> list[Path]:
    files = write_series(
        folder / "ct", SeriesSpec(modality="CT", count=5, study_instance_uid=study)
    )
    if mr:
        spec = SeriesSpec(modality="MR", count=7, series_description="T1 axial",
                          study_instance_uid=study)  # fmt: skip
        files += write_series(folder / "mr", spec)
    return files


def test_a_ct_and_an_mr_of_one_study_go_as_one_job_and_a_follow_up_makes_its_own(
    settings: Settings, standin: StandIn, relay: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    write_fingerprint(
        settings, "ct-mr.json", model_human_readable_id="ct-model",
        inference_server_url=standin.url_v2, inference_server_api=2,
        triggers=[{"name": "CT", "modality_regex": "^CT$"},
                  {"name": "MR T1", "modality_regex": "^MR$", "series_description_regex": "T1"}],
    )  # fmt: skip
    time.sleep(1)
    storescu(settings, _ct_and_mr(tmp_path / "first", "1.2.826.0.1.3680043.10.1"))
    wait_for(lambda: len(standin.submissions) == 1)
    [submission] = standin.submissions
    assert len(submission.members) == 12
    layout = {tuple(member.split("/")[:2]) for member in submission.members}
    assert len(layout) == 2  # <SOPClassUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, 2 series
    # The same patient, descriptions and modalities a year on: another study, its own job.
    storescu(settings, _ct_and_mr(tmp_path / "follow-up", "1.2.826.0.1.3680043.10.2"))
    wait_for(lambda: len(standin.submissions) == 2)
    assert len(standin.submissions[1].members) == 12
    assert not set(standin.submissions[1].members) & set(submission.members)


def test_a_study_with_the_ct_alone_is_not_submitted_and_ends_visibly(
    settings: Settings, standin: StandIn, relay: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    write_fingerprint(
        settings, "ct-mr.json", model_human_readable_id="ct-model",
        inference_server_url=standin.url_v1, max_wait=3,
        triggers=[{"name": "CT", "modality_regex": "^CT$"},
                  {"name": "MR T1", "modality_regex": "^MR$"}],
    )  # fmt: skip
    time.sleep(1)
    storescu(settings, _ct_and_mr(tmp_path, "1.2.826.0.1.3680043.10.3", mr=False))
    env = {**os.environ, **relay_env(settings)}
    wait_for(lambda: "waiting" in _series(env))
    assert "no series for trigger 'MR T1'" in _series(env)
    wait_for(lambda: "unmatched" in _series(env))
    assert "ct-mr.json: not matched: no series for trigger 'MR T1'" in _series(env)
    assert standin.submissions == []


def test_a_ct_stack_with_a_slice_missing_is_held_until_the_slice_comes(
    settings: Settings, standin: StandIn, relay: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    write_fingerprint(
        settings, "ct.json", model_human_readable_id="ct-model", modality_regex="CT",
        inference_server_url=standin.url_v1, check_geometry=True,
    )  # fmt: skip
    time.sleep(1)
    stack = write_series(tmp_path / "ct", SeriesSpec(modality="CT", count=10))
    storescu(settings, stack[:4] + stack[5:])
    env = {**os.environ, **relay_env(settings)}
    wait_for(lambda: "waiting" in _series(env))
    assert "incomplete" in _series(env) and "a gap between 3 mm and 5 mm" in _series(env)
    assert standin.submissions == []
    storescu(settings, [stack[4]])
    wait_for(lambda: len(standin.submissions) == 1)
    assert len(standin.submissions[0].members) == 10


def test_a_series_is_submitted_at_the_end_of_its_association_without_waiting_for_quiet(
    standin: StandIn, tmp_path: Path
) -> None:
    settings = relay_settings(
        tmp_path, CERT_FILE=standin.ca_file, POST_AFTER=120, POST_INTERVAL=30
    )  # the quiet timer and the tick alone would take minutes
    settings.FINGERPRINT_DIR.mkdir(parents=True, exist_ok=True)
    write_fingerprint(
        settings, "ct.json", model_human_readable_id="ct-model", modality_regex="CT",
        inference_server_url=standin.url_v1, complete_on_association_end=True,
    )  # fmt: skip
    process = start_relay(settings, tmp_path / "relay.log")
    try:
        storescu(settings, write_series(tmp_path / "ct", SeriesSpec(modality="CT", count=3)))
        wait_for(lambda: len(standin.submissions) == 1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    assert len(standin.submissions[0].members) == 3
