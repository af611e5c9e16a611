"""What the HTTP side is given by app.py: the database, the token, and the live facts
(readiness checks, gauges) only the running relay knows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

Check = Callable[[], str | None]  # None: fine; else what is wrong, in words


@dataclass(frozen=True)
class Live:
    """Facts of this process, read at each request."""

    free_bytes: Callable[[], int]  # on INCOMING_DIR's file system
    associations: Callable[[], int]  # open in the Store SCP


@dataclass(frozen=True)
class WebContext:
    """Everything a request may need."""

    engine: Engine  # for the few writes (a retry)
    reader: Engine  # for every read: no write lock, a small pool (isdr.db.engine)
    token: str = field(repr=False)  # "": none set, so nothing but /healthz and /readyz
    checks: Mapping[str, Check]  # for /readyz, by name
    live: Live
    clock: Callable[[], datetime]
    failures: dict[str, list[float]] = field(default_factory=dict)  # wrong tokens, by peer
