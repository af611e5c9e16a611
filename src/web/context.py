"""What the HTTP side is given by app.py: the database, the token, the users file, and
the live facts (readiness checks, gauges) only the running relay knows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from isdr.domain.servers import Servers
from isdr.pictures.worker import Renderer as Pictures
from isdr.web.users import Users

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
    users: Users  # the console's people (USERS_FILE)
    incoming_dir: Path = Path("incoming")  # where the instances' paths start
    jobs_dir: Path = Path("data/jobs")  # where each job's output folder is
    pictures: Pictures | None = None  # renders thumbnails and predictions; None: no pictures
    servers: Callable[[], Servers] = Servers  # SERVERS_FILE as last loaded
    session_hours: float = 12.0  # how long a login lasts
    secure_cookies: bool = False  # HTTPS is on: cookies are sent over it only
    failures: dict[str, list[float]] = field(default_factory=dict)  # wrong tokens, by peer
