"""`isdr fingerprints check` and `isdr fingerprints test`, run as a physicist would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from isdr.synthetic import SeriesSpec, write_series

ISDR = [sys.executable, "-m", "isdr"]
EXAMPLES = Path(__file__).resolve().parents[2] / "CONFIGURATION" / "FINGERPRINTS"


def isdr(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_DIR": str(cwd / "data")}
    return subprocess.run(
        [*ISDR, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_the_shipped_examples_pass_the_check_once_renamed(tmp_path: Path) -> None:
    examples = sorted(EXAMPLES.glob("*.json.example"))
    assert len(examples) >= 4
    for example in examples:
        shutil.copy(example, tmp_path / example.name.removesuffix(".example"))
    result = isdr("fingerprints", "check", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("OK ") == len(examples)


def test_check_exits_non_zero_and_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "typo.json").write_text(
        json.dumps(
            {
                "modality_regx": "CT",
                "inference_server_url": "https://s",
                "model_human_readable_id": "m",
            }
        )
    )
    result = isdr("fingerprints", "check", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "typo.json:1:" in result.stdout and "did you mean 'modality_regex'" in result.stdout


def test_test_tells_which_fingerprint_matches_and_which_rule_failed(tmp_path: Path) -> None:
    folder = tmp_path / "fp"
    folder.mkdir()
    base = {"inference_server_url": "https://s/api/tasks/", "model_human_readable_id": "m"}
    (folder / "ct.json").write_text(json.dumps({**base, "modality_regex": "CT"}))
    (folder / "mr.json").write_text(json.dumps({**base, "modality_regex": "MR"}))
    write_series(tmp_path / "series", SeriesSpec(modality="CT", count=2))
    result = isdr(
        "fingerprints", "test", str(tmp_path / "series"), "--folder", str(folder), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "MATCH  ct.json" in result.stdout
    assert "no     mr.json: modality_regex 'MR' not found in ('CT',)" in result.stdout
    assert "2 file(s)" in result.stdout
