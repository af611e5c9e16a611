"""`isdr standin` as a newcomer uses it: start it, paste its fingerprint, run `isdr serve`
against it, send a series with dcmtk's storescu, and find the predictions delivered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from isdr.synthetic import SeriesSpec, write_series
from tests.e2e.test_serve import ISDR, start_relay, wait_for
from tests.helpers import relay_settings


def read_until_ready(process: subprocess.Popen[str], timeout: float = 30) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, f"isdr standin ended early: {''.join(lines)}"
        lines.append(line)
        if line.startswith("Ready"):
            return "".join(lines)
    raise AssertionError("isdr standin did not get ready in time")


def printed_fingerprint(text: str, generation: int) -> dict[str, object]:
    start = text.index(f"Fingerprint for generation {generation}")
    body = text[text.index("{", start) :]
    return dict(json.JSONDecoder().raw_decode(body)[0])


def test_isdr_standin_and_isdr_serve_deliver_a_series_end_to_end(
    tmp_path: Path, dcmtk: None
) -> None:
    received = tmp_path / "received"
    standin = subprocess.Popen(
        [*ISDR, "standin", "--destination", str(received)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    relay = None
    try:
        text = read_until_ready(standin)
        cert_file = re.search(r"^CERT_FILE=(.+)$", text, re.MULTILINE)
        assert cert_file is not None
        settings = relay_settings(tmp_path, CERT_FILE=cert_file.group(1), POST_AFTER=0.5,
                                  POST_INTERVAL=0.2, GET_INTERVAL=0.2)  # fmt: skip
        settings.FINGERPRINT_DIR.mkdir(parents=True, exist_ok=True)
        fingerprint = printed_fingerprint(text, 2)
        (settings.FINGERPRINT_DIR / "standin.json").write_text(json.dumps(fingerprint))
        relay = start_relay(settings, tmp_path / "relay.log")
        write_series(tmp_path / "ct", SeriesSpec(count=3))
        files = sorted(str(p) for p in (tmp_path / "ct").rglob("*.dcm"))
        subprocess.run(
            ["storescu", "-aec", settings.SCP_AE_TITLE, "127.0.0.1", str(settings.SCP_PORT),
             *files], check=True, capture_output=True,
        )  # fmt: skip
        # The stand-in's model answers a series with a derived series of two instances.
        wait_for(lambda: len([p for p in received.rglob("*") if p.is_file()]) == 2,
                 timeout=60, step=0.2)  # fmt: skip
    finally:
        for process in (relay, standin):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=15)
    assert standin.returncode == 0


def test_isdr_standin_without_the_demo_extra_says_what_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "trustme.py"  # shadows the real package: as if it were missing
    blocker.write_text("raise ModuleNotFoundError('no trustme', name='trustme')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "isdr", "standin"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert "needs the demo extra" in done.stderr and "Traceback" not in done.stderr
