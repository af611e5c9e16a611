"""Migrating is true: the original relay's documented environment and example fingerprint
start `isdr serve`, which answers `isdr echo`, loads the fingerprint (with the warning its
17-character AE title earns) and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isdr.config import Settings
from tests.helpers import free_port

ISDR = [sys.executable, "-m", "isdr"]
ORIGINAL = Path(__file__).resolve().parents[1] / "data" / "original_relay"
CONTAINER_PATHS = ("INCOMING_DIR", "FINGERPRINT_DIR", "CERT_FILE")


def documented(name: str) -> dict[str, str]:
    """NAME=value lines, as `docker run -e` passes them (quotes are the shell's)."""
    lines = (ORIGINAL / name).read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip()]
    return {key: value.strip('"') for key, value in pairs}


def as_here(variables: dict[str, str], root: Path) -> dict[str, str]:
    """The variables with the container's paths moved under root, and a free port; what
    this process inherits of the relay's own settings is left out."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(variables)
    for name in CONTAINER_PATHS:
        if name in variables:
            env[name] = str(root / variables[name].lstrip("/"))
    env["SCP_PORT"] = str(free_port())
    return env


def isdr(root: Path, env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ISDR, *command], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )


def wait_for_echo(root: Path, env: dict[str, str], relay: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while isdr(root, env, "echo").returncode != 0:
        assert relay.poll() is None, "the relay exited during start-up"
        assert time.monotonic() < deadline, "isdr echo never passed"
        time.sleep(0.3)


@pytest.mark.parametrize(
    ("env_file", "deletes_remotely"), [("readme.env", True), ("run.sh.env", False)]
)
def test_the_original_relays_configuration_starts_the_relay(
    tmp_path: Path, env_file: str, deletes_remotely: bool
) -> None:
    env = as_here(documented(env_file), tmp_path)
    fingerprints = tmp_path / "CONFIGURATION" / "FINGERPRINTS"  # mounted as the README said
    fingerprints.mkdir(parents=True)
    shutil.copy(ORIGINAL / "fingerprint.json", fingerprints)
    config = isdr(tmp_path, env, "config").stdout.splitlines()
    assert ["ASK_INFERENCE_SERVER_TO_DELETE_TASK", str(deletes_remotely)] in [
        line.split() for line in config
    ]
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        relay = subprocess.Popen([*ISDR, "serve"], cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        wait_for_echo(tmp_path, env, relay)
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(timeout=15)
    text = log.read_text()
    assert code == 0 and "relay stopped" in text and "Traceback" not in text
    assert "1 fingerprint(s) loaded (fingerprint.json)" in text
    assert (
        "fingerprint fingerprint.json: field 'scus.0.scu_ae_title': AE title "
        "'DICOM_ENDPOINT_AE' is longer than 16 characters" in text
    )
