"""SERVERS_FILE: the named InferenceServers that serve pools (see isdr.domain.servers).

Read again within moments of a change (its size, time or inode), like the fingerprints; a
version that does not load is reported once (file, line, field) and the last good one
stays in force, so that a half-saved edit never empties a pool. A missing file is no
server (fingerprints that name a URL need none).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from isdr.domain.servers import Server, Servers
from isdr.errors import ConfigError
from isdr.fingerprints.loader import (
    FingerprintError,
    RepeatedKey,
    key_position,
    unknown_key,
    without_repeats,
)

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
SERVER_KEYS = tuple(Server.model_fields)


def load_servers(path: Path) -> Servers:
    """The servers file; none when it does not exist; ConfigError naming the line and the
    field of every problem when it does not load."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_BYTES // 1024} KiB")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Servers()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc}") from exc
    result = parse_servers(str(path), text)
    if isinstance(result, Servers):
        return result
    raise ConfigError("; ".join(map(str, result)))


def parse_servers(name: str, text: str) -> Servers | list[FingerprintError]:
    """The servers of a file's text (named `name` in errors), or every reason it fails."""
    try:
        data = json.loads(text, object_pairs_hook=without_repeats)
    except json.JSONDecodeError as exc:
        return [FingerprintError(name, f"invalid JSON: {exc.msg}", exc.lineno, exc.colno)]
    except RepeatedKey as exc:
        return [FingerprintError(name, "the key appears twice in one object", field=exc.key)]
    if not isinstance(data, dict):
        return [FingerprintError(name, 'must be a JSON object {"servers": [...]}', 1, 1)]
    try:
        return Servers.model_validate(data)
    except ValidationError as exc:
        return [_describe(name, text, data, error) for error in exc.errors(include_input=False)]


def _describe(name: str, text: str, data: dict[str, Any], error: Any) -> FingerprintError:
    location = [str(part) for part in error["loc"]]
    key = next((part for part in reversed(location) if not part.isdigit()), "")
    line, column = _server_key_position(text, data, location, key)
    dotted = ".".join(location) or None
    if error["type"] == "extra_forbidden":
        known = SERVER_KEYS if len(location) > 1 else ("servers",)
        return FingerprintError(name, unknown_key(key, known), line, column, dotted)
    if error["type"] == "missing":
        return FingerprintError(name, "required but missing", None, None, dotted)
    message = str(error["msg"]).removeprefix("Value error, ")
    return FingerprintError(name, message, line, column, dotted)


def _server_key_position(
    text: str, data: dict[str, Any], location: list[str], key: str
) -> tuple[int | None, int | None]:
    """Where the key is: in the entry of its server, found by the server's name (an entry
    that leaves a key out must not send the reader to a neighbour's), else as fingerprints
    do."""
    entries = data.get("servers")
    index = int(location[1]) if len(location) > 2 and location[1].isdigit() else None
    if index is None or not isinstance(entries, list) or index >= len(entries):
        return key_position(text, key, location)
    entry = entries[index]
    named = entry.get("name") if isinstance(entry, dict) else None
    own = re.search(rf'"name"\s*:\s*{re.escape(json.dumps(named))}', text) if named else None
    if own is None:
        return key_position(text, key, location)
    start = own.start() if key == "name" else own.end()
    found = re.compile(rf'"{re.escape(key)}"\s*:').search(text, start)
    before = re.compile(r'"name"\s*:').search(text, start)
    if found is None or (before is not None and before.start() < found.start()):
        return key_position(text, key, location)
    offset = found.start()
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


class ServersFile:
    """SERVERS_FILE as last loaded: `current()` looks at the file (a stat) and reads it
    again when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._servers = Servers()
        self._error = ""

    def current(self) -> Servers:
        """The servers in force (a broken new version: the last good one)."""
        stamp = _stamp(self.path)
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._load()
            return self._servers

    def _load(self) -> None:
        try:
            servers = load_servers(self.path)
        except ConfigError as exc:
            if str(exc) != self._error:
                logger.error("SERVERS_FILE does not load, the last good version stays: %s", exc)
            self._error = str(exc)
            return
        self._error = ""
        if servers != self._servers:
            names = ", ".join(server.name for server in servers.servers) or "none"
            logger.info(
                "SERVERS_FILE %s: %d server(s) (%s)", self.path, len(servers.servers), names
            )
        self._servers = servers


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)
