"""Time, passed in: decisions take `now` as a parameter, stages take a `Clock`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC: the relay's one clock."""
    return datetime.now(UTC)
