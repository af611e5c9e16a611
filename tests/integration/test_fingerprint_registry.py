"""Hot reload: a change to FINGERPRINT_DIR takes effect within 2 s, without a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from isdr.fingerprints.registry import FingerprintRegistry

BASE = {"inference_server_url": "https://s/api/tasks/", "model_human_readable_id": "m"}


def within_two_seconds(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 2.0
    while not condition():
        assert time.monotonic() < deadline, "not within 2 s"
        time.sleep(0.05)


def test_adding_changing_and_removing_a_file_take_effect(tmp_path: Path) -> None:
    registry = FingerprintRegistry(tmp_path)
    registry.start()
    try:
        assert registry.current() == {}
        (tmp_path / "a.json").write_text(json.dumps({**BASE, "modality_regex": "CT"}))
        within_two_seconds(lambda: "a.json" in registry.current())
        (tmp_path / "a.json").write_text(json.dumps({**BASE, "modality_regex": "MR"}))
        within_two_seconds(lambda: registry.current()["a.json"].modality_regex == "MR")
        (tmp_path / "broken.json").write_text("{")
        (tmp_path / "a.json").unlink()
        within_two_seconds(lambda: registry.current() == {})
    finally:
        registry.stop()
