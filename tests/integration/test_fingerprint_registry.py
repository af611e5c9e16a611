"""Hot reload: a change to FINGERPRINT_DIR takes effect within 2 s, without a restart."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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


def test_a_missing_folder_is_a_warning_not_a_new_empty_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "FINGERPRINTS"
    registry = FingerprintRegistry(folder)
    with caplog.at_level(logging.WARNING, logger="isdr.fingerprints.registry"):
        registry.start()
    try:
        assert not folder.exists()
        assert f"FINGERPRINT_DIR={folder} does not exist: no fingerprint will match" in caplog.text
    finally:
        registry.stop()


def test_a_folder_created_after_the_start_is_loaded_and_then_watched(tmp_path: Path) -> None:
    folder = tmp_path / "FINGERPRINTS"
    registry = FingerprintRegistry(folder)
    registry.start()
    try:
        folder.mkdir()
        (folder / "a.json").write_text(json.dumps({**BASE, "modality_regex": "CT"}))
        within_two_seconds(lambda: "a.json" in registry.current())
        (folder / "b.json").write_text(json.dumps({**BASE, "modality_regex": "MR"}))
        within_two_seconds(lambda: "b.json" in registry.current())
    finally:
        registry.stop()
