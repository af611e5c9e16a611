"""SENDERS_FILE: the AEs predictions may go back to (a fingerprint's `{"sender": true}`).

Read at each use, so an edit counts at the next delivery or retry; a file that does not
load is a ConfigError naming the file and the field, and no sender is sent to meanwhile.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from isdr.domain.senders import KnownSenders
from isdr.errors import ConfigError

MAX_BYTES = 1024 * 1024


def load_senders(path: Path) -> KnownSenders:
    """The senders file; none known when it does not exist."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_BYTES // 1024} KiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return KnownSenders()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable as JSON: {exc}") from exc
    try:
        return KnownSenders.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_problems(exc)}") from None


def _problems(error: ValidationError) -> str:
    found = []
    for problem in error.errors(include_input=False):
        where = ".".join(str(part) for part in problem["loc"]) or "the file"
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        found.append(f"{where}: {message}")
    return "; ".join(found)
