"""`isdr serve` that cannot start: one clear line on stderr, exit 1 (2 for a bad setting), never
a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, relay_env, relay_settings

ISDR = [sys.executable, "-m", "isdr"]


def serve(tmp_path: Path, host: str, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **relay_env(relay_settings(tmp_path)), "SCP_HOSTNAME": host}
    env["SCP_PORT"] = str(port)
    return subprocess.run([*ISDR, "serve"], env=env, capture_output=True, text=True, timeout=60)


def one_line_saying(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("isdr: cannot listen on SCP_HOSTNAME=") and words in line, line


def test_a_port_already_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        result = serve(tmp_path, "127.0.0.1", taken.getsockname()[1])
    one_line_saying(result, "the port is already in use")


def test_an_address_that_is_not_this_machines_is_one_line(tmp_path: Path) -> None:
    result = serve(tmp_path, "192.0.2.1", free_port())  # TEST-NET-1: never ours
    one_line_saying(result, "192.0.2.1 is not an address of this machine")


def test_an_unknown_host_name_is_one_line(tmp_path: Path) -> None:
    result = serve(tmp_path, "no-such-host.invalid", free_port())  # .invalid: never resolves
    one_line_saying(result, "is not a known host name or address")


def test_a_folder_the_relay_cannot_create_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    env = {**os.environ, **relay_env(relay_settings(tmp_path))}
    env["INCOMING_DIR"] = str(tmp_path / "a-file" / "incoming")
    result = subprocess.run([*ISDR, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith(f"isdr: cannot create INCOMING_DIR={tmp_path / 'a-file' / 'incoming'}")
    assert "may write to" in line


def test_a_database_url_that_is_not_a_url_is_one_line_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, **relay_env(relay_settings(tmp_path)), "DATABASE_URL": "not a url"}
    result = subprocess.run([*ISDR, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.splitlines()
    assert "DATABASE_URL" in line and "not a SQLAlchemy URL" in line, line


def test_an_http_port_already_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, **relay_env(relay_settings(tmp_path, HTTP_PORT=port))}
        result = subprocess.run(
            [*ISDR, "serve"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith(f"isdr: cannot listen on HTTP_HOSTNAME=127.0.0.1 HTTP_PORT={port}")
    assert "the port is already in use" in line and "choose another HTTP_PORT" in line
