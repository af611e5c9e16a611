"""Reading attribute values that may be absent, single, multiple or malformed, without raising."""

from __future__ import annotations

import math
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence


def values(ds: Dataset, keyword: str) -> list[Any]:
    """An attribute's values (or a sequence's items) as a list: none when absent or empty,
    one when single-valued."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, Sequence | MultiValue | list | tuple):
        return list(value)
    return [value]


def as_float(value: object) -> float | None:
    """A finite float, or None when the value is not one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def floats(ds: Dataset, keyword: str, count: int) -> list[float] | None:
    """Exactly `count` finite numbers, or None."""
    found = [as_float(value) for value in values(ds, keyword)]
    if len(found) != count or any(number is None for number in found):
        return None
    return [number for number in found if number is not None]


def first_float(ds: Dataset, keyword: str) -> float | None:
    """The first value of a decimal attribute (WindowCenter may hold several), or None."""
    found = values(ds, keyword)
    return as_float(found[0]) if found else None


def text(ds: Dataset, keyword: str) -> str:
    """A string attribute, stripped; empty when absent."""
    return str(ds.get(keyword, "") or "").strip()
