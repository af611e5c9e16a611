"""`isdr jobs` and `isdr series` run outside the relay's folder find no database: they say
where they looked, and create nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from isdr.config import Settings

ISDR = [sys.executable, "-m", "isdr"]


def run_in(folder: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    return subprocess.run(
        [*ISDR, *command], cwd=folder, env={**inherited, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("command", [["jobs"], ["series"], ["jobs", "show", "1"]])
def test_a_read_only_command_in_another_folder_says_where_it_looked_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    result = run_in(tmp_path, *command)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"isdr: no relay database at {tmp_path / 'data' / 'isdr.sqlite3'} (DATA_DIR=data, "
        f"relative to the current folder {tmp_path}): run this in the relay's folder or set "
        "DATA_DIR"
    ]
    assert list(tmp_path.iterdir()) == []


def test_an_absolute_data_dir_without_a_database_is_named_as_it_is(tmp_path: Path) -> None:
    data = tmp_path / "nowhere"
    result = run_in(tmp_path, "jobs", DATA_DIR=str(data))
    assert result.returncode == 1
    assert f"no relay database at {data / 'isdr.sqlite3'} (DATA_DIR={data}):" in result.stderr
    assert not data.exists()
