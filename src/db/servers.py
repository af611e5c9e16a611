"""InferenceServer heartbeats: the last answer of each server, recorded for everyone who
reads the database (the metrics, the API, other relays)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from isdr.db.models import ServerCheck


@dataclass(frozen=True)
class ServerView:
    """One server's last heartbeat."""

    url: str
    api: int
    up: bool
    detail: str
    checked_at: datetime
    up_since: datetime | None


def record_check(engine: Engine, url: str, api: int, up: bool, detail: str, now: datetime) -> None:
    """Record one heartbeat (the server's row is made at its first)."""
    with Session(engine) as session, session.begin():
        row = session.scalars(
            select(ServerCheck).where(ServerCheck.url == url, ServerCheck.api == api)
        ).first()
        if row is None:
            row = ServerCheck(url=url, api=api, up=up, detail=detail, checked_at=now)
            session.add(row)
        was_up = row.up and row.up_since is not None
        row.up, row.detail, row.checked_at = up, detail, now
        row.up_since = (row.up_since if was_up else now) if up else None


def list_servers(engine: Engine) -> list[ServerView]:
    """Every server's last heartbeat, by URL."""
    with Session(engine) as session:
        rows = session.scalars(select(ServerCheck).order_by(ServerCheck.url, ServerCheck.api))
        return [ServerView(r.url, r.api, r.up, r.detail, r.checked_at, r.up_since) for r in rows]
