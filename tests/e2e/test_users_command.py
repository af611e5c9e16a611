"""`isdr users`: the console's people, added, changed, listed and removed from a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ISDR = [sys.executable, "-m", "isdr"]


def isdr(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_DIR": str(cwd / "data"), "USERS_FILE": str(cwd / "users.json")}
    return subprocess.run(
        [*ISDR, *args], env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_people_are_added_listed_changed_and_removed(tmp_path: Path) -> None:
    empty = isdr("users", "list", cwd=tmp_path)
    assert empty.returncode == 0 and "nobody in" in empty.stdout
    added = isdr("users", "add", "olga", "--role", "operator", "--password-stdin",
                 cwd=tmp_path, stdin="a long password\n")  # fmt: skip
    assert added.returncode == 0 and "added olga (operator)" in added.stdout
    saved = json.loads((tmp_path / "users.json").read_text())
    assert saved["users"][0]["password_hash"].startswith("$argon2id$")
    assert "a long password" not in (tmp_path / "users.json").read_text()
    assert (tmp_path / "users.json").stat().st_mode & 0o077 == 0  # its owner's only
    changed = isdr("users", "add", "olga", "--password-stdin", cwd=tmp_path, stdin="another one!\n")
    assert "changed olga (viewer)" in changed.stdout
    assert isdr("users", "list", cwd=tmp_path).stdout == "olga\tviewer\n"
    assert isdr("users", "remove", "olga", cwd=tmp_path).returncode == 0
    gone = isdr("users", "remove", "olga", cwd=tmp_path)
    assert gone.returncode == 1 and "nobody called olga" in gone.stderr


def test_a_short_password_or_a_bad_name_changes_nothing(tmp_path: Path) -> None:
    short = isdr("users", "add", "olga", "--password-stdin", cwd=tmp_path, stdin="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    bad = isdr("users", "add", "olga smith", "--password-stdin", cwd=tmp_path,
               stdin="a long password\n")  # fmt: skip
    assert bad.returncode == 1 and not (tmp_path / "users.json").exists()
    assert bad.stderr.startswith("isdr: 'olga smith' is not a user name")
