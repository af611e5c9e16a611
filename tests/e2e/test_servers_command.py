"""`isdr servers`: the pools' members listed, drained and resumed from a shell, and
`isdr fingerprints check` on a fingerprint served by a pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from isdr.db.engine import make_engine

ISDR = [sys.executable, "-m", "isdr"]
SERVERS = {"servers": [
    {"name": "gpu-a", "url": "https://gpu-a.example.org", "api": 2, "models": ["ct-model"],
     "capacity": 3, "weight": 2, "token": "secret-of-gpu-a"},
    {"name": "gpu-b", "url": "https://gpu-b.example.org/api/tasks/", "models": ["ct-model"]},
]}  # fmt: skip


def isdr(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_DIR": str(cwd / "data"), "SERVERS_FILE": str(cwd / "servers.json"),
           "FINGERPRINT_DIR": str(cwd / "fingerprints")}  # fmt: skip
    return subprocess.run(
        [*ISDR, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_servers_are_listed_drained_and_resumed(tmp_path: Path) -> None:
    (tmp_path / "servers.json").write_text(json.dumps(SERVERS))
    (tmp_path / "data").mkdir()
    make_engine(f"sqlite:///{tmp_path / 'data' / 'isdr.sqlite3'}").dispose()
    listed = isdr("servers", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "IN"]
    assert lines[1].split()[:4] == ["gpu-a", "up", "0/3", "2"]
    assert "secret-of-gpu-a" not in listed.stdout
    drained = isdr("servers", "drain", "gpu-a", cwd=tmp_path)
    assert drained.returncode == 0 and "gpu-a is drained" in drained.stdout
    assert isdr("servers", cwd=tmp_path).stdout.splitlines()[1].split()[1] == "drained"
    again = isdr("servers", "drain", "gpu-a", cwd=tmp_path)
    assert "drained already" in again.stdout
    resumed = isdr("servers", "resume", "gpu-a", cwd=tmp_path)
    assert resumed.returncode == 0 and "gpu-a takes jobs again" in resumed.stdout
    unknown = isdr("servers", "drain", "gpu-c", cwd=tmp_path)
    assert unknown.returncode == 1 and "no server named 'gpu-c' in SERVERS_FILE" in unknown.stderr


def test_a_broken_servers_file_is_named_with_its_line_and_field(tmp_path: Path) -> None:
    text = json.dumps(SERVERS, indent=2).replace('"capacity"', '"capacty"')
    (tmp_path / "servers.json").write_text(text)
    broken = isdr("servers", cwd=tmp_path)
    assert broken.returncode == 1
    assert "field 'servers.0.capacty': unknown key; did you mean 'capacity'?" in broken.stderr
    assert f"servers.json:{text[: text.index('capacty')].count(chr(10)) + 1}:" in broken.stderr


def test_fingerprints_check_says_whether_a_pool_has_a_server(tmp_path: Path) -> None:
    folder = tmp_path / "fingerprints"
    folder.mkdir()
    (folder / "pool.json").write_text(json.dumps(
        {"modality_regex": "CT", "model_human_readable_id": "ct-model"}
    ))  # fmt: skip
    (folder / "narrow.json").write_text(json.dumps(
        {"model_human_readable_id": "ct-model", "inference_servers": ["gpu-a", "gpu-z"]}
    ))  # fmt: skip
    missing = isdr("fingerprints", "check", str(folder), cwd=tmp_path)
    assert missing.returncode == 1 and "SERVERS_FILE" in missing.stdout
    assert "ERROR  pool.json: no server serves its model" in missing.stdout
    (tmp_path / "servers.json").write_text(json.dumps(SERVERS))
    found = isdr("fingerprints", "check", str(folder), cwd=tmp_path)
    assert found.returncode == 0, found.stdout
    assert "OK     SERVERS_FILE" in found.stdout and "2 server(s)" in found.stdout
    assert "WARN   narrow.json: inference_servers names 'gpu-z'" in found.stdout
    assert "OK     pool.json: model 'ct-model' on the pool of its model" in found.stdout
    slashless = json.loads(json.dumps(SERVERS))
    slashless["servers"][1]["url"] = "https://gpu-b.example.org/api/tasks"
    (tmp_path / "servers.json").write_text(json.dumps(slashless))
    checked = isdr("fingerprints", "check", str(folder), cwd=tmp_path)
    assert checked.returncode == 1
    assert (
        "ERROR  SERVERS_FILE: the server gpu-b's url https://gpu-b.example.org/api/tasks lacks"
        in (checked.stdout)
    )
