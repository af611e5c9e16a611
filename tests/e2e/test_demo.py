"""`isdr demo` on this machine, as a newcomer runs it."""

from __future__ import annotations

import subprocess
import sys


def test_isdr_demo_ends_with_the_predictions_delivered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "isdr", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "job 1 is delivered; 10 prediction file(s) landed in the destination" in done.stdout
    assert "to DEMO_PACS@127.0.0.1" in done.stdout
