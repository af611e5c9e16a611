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


def test_test_explains_a_study_which_series_met_which_trigger_and_what_is_missing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "fp"
    folder.mkdir()
    triggers = [
        {"name": "CT", "modality_regex": "^CT$", "check_geometry": True},
        {"name": "MR T1", "modality_regex": "^MR$", "series_description_regex": "T1"},
    ]
    (folder / "ct-mr.json").write_text(json.dumps({
        "inference_server_url": "https://s/api/tasks/", "model_human_readable_id": "m",
        "triggers": triggers,
    }))  # fmt: skip
    study = "1.2.826.0.1.3680043.10.77"
    gapped = SeriesSpec("CT", 6, study_instance_uid=study, series_instance_uid=study + ".1")
    ct = write_series(tmp_path / "one" / "ct", gapped)
    (ct[2]).unlink()  # a slice missing
    result = isdr("fingerprints", "test", str(tmp_path / "one"), "--folder", str(folder),
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trigger 'CT': series 1" in result.stdout
    assert "trigger 'MR T1': no series" in result.stdout
    assert "no     ct-mr.json: not matched: no series for trigger 'MR T1'" in result.stdout
    mr = SeriesSpec("MR", 3, series_description="T1 axial", study_instance_uid=study,
                    series_instance_uid=study + ".2")  # fmt: skip
    write_series(tmp_path / "one" / "mr", mr)
    result = isdr("fingerprints", "test", str(tmp_path / "one"), "--folder", str(folder),
                  cwd=tmp_path)  # fmt: skip
    assert "trigger 'MR T1': series 2" in result.stdout
    assert (
        "no     ct-mr.json: incomplete: series 1 (CT, 'Synthetic series'): a gap" in result.stdout
    )
    whole = gapped
    write_series(tmp_path / "two" / "ct", whole)
    write_series(tmp_path / "two" / "mr", mr)
    result = isdr("fingerprints", "test", str(tmp_path / "two"), "--folder", str(folder),
                  cwd=tmp_path)  # fmt: skip
    assert "MATCH  ct-mr.json: one job holding CT = series 1, MR T1 = series 2" in result.stdout


def test_check_names_a_broken_senders_file_when_a_fingerprint_sends_back(tmp_path: Path) -> None:
    (tmp_path / "back.json").write_text(json.dumps({
        "modality_regex": "CT", "inference_server_url": "https://x/",
        "model_human_readable_id": "m", "scus": [{"sender": True}],
    }))  # fmt: skip
    senders = tmp_path.parent / f"{tmp_path.name}-senders.json"  # not in the folder checked
    senders.write_text('{"senders": [{"ae_title": "A", "port": 104}]}')
    env = {**os.environ, "SENDERS_FILE": str(senders)}
    result = subprocess.run(
        [*ISDR, "fingerprints", "check", str(tmp_path)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "ERROR  SENDERS_FILE" in result.stdout and "senders.0.host" in result.stdout
    assert result.stdout.count("ERROR") == 1, result.stdout  # the fingerprint itself is fine
