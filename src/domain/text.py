"""Values from the wire, bounded before they reach a log line or a regular expression.

DICOM's own limits are small (LO 64 characters, CS and AE 16, UI 64); a hostile sender
can put megabytes in a tag. A log line shows at most `SHOWN` characters of a value, and a
fingerprint's pattern is searched in at most `SEARCHED`.
"""

from __future__ import annotations

SHOWN = 64  # characters of a value in a log line (LO's limit)
SEARCHED = 1024  # characters a fingerprint's pattern is searched in (16 times LO's limit)


def shown(value: str, limit: int = SHOWN) -> str:
    """`value`, cut to `limit` characters with a note of how long it was."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} characters)"


def searched(value: str) -> str:
    """The part of `value` a pattern is searched in."""
    return value[:SEARCHED]
