"""How long to wait before trying again: the same rule for submits and deliveries."""

from __future__ import annotations

MAX_RETRY_DELAY = 600.0


def doubling(first: float, attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: `first`, doubled each time, capped at 10 min."""
    return float(min(first * 2.0 ** (attempts - 1), MAX_RETRY_DELAY))
