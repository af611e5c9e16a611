"""`isdr demo` on this machine, as a newcomer runs it."""

from __future__ import annotations

import subprocess
import sys

from isdr.synthetic import SeriesSpec


def test_isdr_demo_ends_with_the_predictions_delivered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "isdr", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "job 1 is delivered; 10 prediction file(s) landed in the destination" in done.stdout
    assert "to DEMO_PACS@127.0.0.1" in done.stdout


def test_no_patient_name_or_id_appears_in_the_log_of_a_whole_run() -> None:
    spec = SeriesSpec()  # what the demo sends: the synthetic test patient
    done = subprocess.run(
        [sys.executable, "-m", "isdr", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    everything = done.stdout + done.stderr
    assert "series 1 matched " in everything  # the INFO log is there
    for secret in (spec.patient_id, spec.patient_name, *spec.patient_name.split("^")):
        assert secret not in everything
