"""The console's login sessions, in the database so that a restart (or, later, another
relay on the same database) keeps them, and a logout ends them everywhere.

The cookie carries a random token; the database keeps only its SHA-256, so a copy of the
database opens no session.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from isdr.db.models import WebSession


@dataclass(frozen=True)
class OpenSession:
    """A live session: whose, and the CSRF token its forms carry."""

    user: str
    stamp: str  # the password it was opened with, as `isdr.web.users` stamps it
    csrf: str
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(
    engine: Engine, user: str, stamp: str, now: datetime, hours: float
) -> tuple[str, OpenSession]:
    """A new session for `user`: the cookie's token, and the session. Sessions that have
    ended are removed on the way."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires_at = now + timedelta(hours=hours)
    with Session(engine) as session, session.begin():
        session.execute(delete(WebSession).where(WebSession.expires_at <= now))
        session.add(
            WebSession(
                token_sha256=_digest(token),
                user=user,
                stamp=stamp,
                csrf=csrf,
                created_at=now,
                expires_at=expires_at,
            )
        )
    return token, OpenSession(user, stamp, csrf, expires_at)


def find_session(engine: Engine, token: str, now: datetime) -> OpenSession | None:
    """The live session of a cookie's token, or None (unknown, or ended)."""
    if not token or len(token) > 128:
        return None
    with Session(engine) as session:
        row = session.scalars(
            select(WebSession).where(WebSession.token_sha256 == _digest(token))
        ).first()
        if row is None or row.expires_at <= now:
            return None
        return OpenSession(row.user, row.stamp, row.csrf, row.expires_at)


def close_session(engine: Engine, token: str) -> None:
    """Log out: the session ends at once."""
    with Session(engine) as session, session.begin():
        session.execute(delete(WebSession).where(WebSession.token_sha256 == _digest(token)))
