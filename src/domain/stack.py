"""Whether a stack of slices (a CT or MR series) is complete: the pure decision.

A model that contours organs draws a wrong contour across a missing slice, so a
fingerprint may ask that a stack be checked before it is submitted. Two checks:

- geometry (`check_geometry`): every slice's ImagePositionPatient projected on the slice
  normal (the cross product of ImageOrientationPatient's row and column). The distinct
  places, sorted, should be evenly spaced; a step of about k times the usual spacing is a
  gap of k - 1 slices, said with where it is. With NumberOfTemporalPositions T > 1 (a 4D
  series) each place is expected T times.
- a count (`expected_count`, `check_count`): an expected number of instances that the data
  states (ImagesInAcquisition, or places x NumberOfTemporalPositions) or that a fingerprint
  names, against the number received.

Geometry cannot see a missing first or last slice: a stack that ends one slice early is
evenly spaced. Only an expected count can see that. Likewise the count made from places x
temporal positions counts only the places that arrived.

What cannot be judged is not held: fewer than 3 positioned slices, or slices of several
orientations (a localizer, a multi-planar series), is complete with a note that says so.
A slice whose position or orientation is absent or unusable (not finite, no normal) counts
as unpositioned. No I/O here; hostile input (huge text, NaN) never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import median

Vector = tuple[float, float, float]

MAX_DS_TEXT = 1024  # characters of a multi-value DS text parsed; longer is refused
SAME_NORMAL = 0.999  # dot product of two normals above which they are one orientation
SAME_PLACE = 0.01  # mm along the normal within which two slices are at one place
SPACING_SLACK = 0.10  # a step within this fraction of the usual spacing (or k times it) is fine
MAX_ORIENTATIONS = 16  # distinct orientations counted before the search stops
MAX_MM = 1e9  # a coordinate farther than this (1000 km) is unusable, not a place

_DS = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


@dataclass(frozen=True)
class SliceFacts:
    """What one instance says of its place in a stack (None: the tag is absent or unreadable)."""

    position: tuple[float, float, float] | None  # ImagePositionPatient (0020,0032)
    orientation: tuple[float, float, float, float, float, float] | None  # (0020,0037)
    images_in_acquisition: int | None = None  # ImagesInAcquisition (0020,1002)
    temporal_positions: int | None = None  # NumberOfTemporalPositions (0020,0105)


@dataclass(frozen=True)
class StackVerdict:
    complete: bool
    reason: str  # "" when complete; else words a person reads (where the gap is)
    note: str = ""  # what was checked when complete, or why it was not


@dataclass(frozen=True)
class _Place:
    at: float  # mm along the slice normal
    count: int  # slices seen there


def parse_decimals(text: str, count: int) -> tuple[float, ...] | None:
    """`count` decimal strings from a DICOM multi-value DS text ("1.5\\-2\\3e1"), or None when
    there are not exactly `count` finite numbers (hostile or broken input never raises)."""
    if len(text) > MAX_DS_TEXT or text.count("\\") != count - 1:
        return None
    values = [_decimal(part) for part in text.split("\\")]
    if any(value is None for value in values):
        return None
    return tuple(value for value in values if value is not None)


def _decimal(text: str) -> float | None:
    stripped = text.strip(" \x00")
    if not _DS.fullmatch(stripped):
        return None
    value = float(stripped)
    return value if math.isfinite(value) else None


def check_geometry(slices: Sequence[SliceFacts]) -> StackVerdict:
    """Whether the positioned slices form one evenly spaced stack without a gap."""
    located = _located(slices)
    unplaced = len(slices) - len(located)
    if len(located) < 3:
        return _unchecked("fewer than 3 positioned slices: not checked")
    normals = _orientations([normal for _, normal in located])
    if len(normals) > 1:
        many = f"at least {MAX_ORIENTATIONS}" if len(normals) >= MAX_ORIENTATIONS else None
        return _unchecked(f"not one stack ({many or len(normals)} orientations): not checked")
    places = _places([_dot(position, normals[0]) for position, _ in located])
    temporal = _temporal(slices)
    reasons = _multiplicity(places, temporal) + _spacing(places)
    if reasons:
        return StackVerdict(complete=False, reason="; ".join(reasons))
    return _unchecked(_complete_note(places, temporal, unplaced))


def expected_count(slices: Sequence[SliceFacts]) -> int | None:
    """How many instances the data says the series has: ImagesInAcquisition when the slices
    that state it agree, else distinct places x NumberOfTemporalPositions (T > 1), else None."""
    stated = {s.images_in_acquisition for s in slices if s.images_in_acquisition is not None}
    if stated:
        value = stated.pop() if len(stated) == 1 else 0
        return value if value > 0 else None
    temporal = _temporal(slices)
    located = _located(slices)
    if temporal < 2 or not located:
        return None
    normals = _orientations([normal for _, normal in located])
    if len(normals) > 1:
        return None
    return len(_places([_dot(position, normals[0]) for position, _ in located])) * temporal


def check_count(received: int, expected: int, source: str) -> StackVerdict:
    """source: where the expected number comes from, e.g. "ImagesInAcquisition" or "the
    fingerprint"; reason e.g. "95 of 98 instances (ImagesInAcquisition)". More than expected
    is complete with a note: waiting cannot mend it."""
    if expected < 1:
        return _unchecked(f"{source} expects {expected} instances: not checked")
    if received < expected:
        return StackVerdict(complete=False, reason=f"{received} of {expected} instances ({source})")
    if received > expected:
        return _unchecked(f"{received} instances where {source} expects {expected}: not held")
    return _unchecked(f"{received} of {expected} instances ({source})")


def _unchecked(note: str) -> StackVerdict:
    return StackVerdict(complete=True, reason="", note=note)


def _located(slices: Sequence[SliceFacts]) -> list[tuple[Vector, Vector]]:
    """(position, unit normal) of each slice that has both, finite and usable."""
    found = []
    for facts in slices:
        if facts.position is None or facts.orientation is None:
            continue
        normal = _normal(facts.orientation)
        if normal is not None and all(abs(v) <= MAX_MM for v in facts.position):
            found.append((facts.position, normal))
    return found


def _normal(orientation: tuple[float, ...]) -> Vector | None:
    """The unit normal of ImageOrientationPatient, None when it has none (parallel, zero, NaN)."""
    (rx, ry, rz, cx, cy, cz) = orientation
    cross = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    length = math.sqrt(sum(c * c for c in cross))
    if not math.isfinite(length) or length < 1e-6:
        return None
    return (cross[0] / length, cross[1] / length, cross[2] / length)


def _dot(a: Vector, b: Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _orientations(normals: list[Vector]) -> list[Vector]:
    """One normal per distinct orientation, counted up to MAX_ORIENTATIONS."""
    distinct: list[Vector] = []
    for normal in normals:
        if not any(_dot(normal, seen) >= SAME_NORMAL for seen in distinct):
            distinct.append(normal)
            if len(distinct) >= MAX_ORIENTATIONS:
                break
    return distinct


def _places(distances: list[float]) -> list[_Place]:
    """Distinct places along the normal, sorted; slices within SAME_PLACE of a place's first
    slice are at that place (so 12.504 and 12.506 are not split by rounding)."""
    places: list[_Place] = []
    for distance in sorted(distances):
        if places and distance - places[-1].at <= SAME_PLACE:
            places[-1] = _Place(places[-1].at, places[-1].count + 1)
        else:
            places.append(_Place(distance, 1))
    return places


def _temporal(slices: Sequence[SliceFacts]) -> int:
    """NumberOfTemporalPositions when every slice that states it agrees on T > 1, else 1."""
    stated = {s.temporal_positions for s in slices if s.temporal_positions is not None}
    if len(stated) == 1:
        (value,) = stated
        return value if value > 1 else 1
    return 1


def _multiplicity(places: list[_Place], temporal: int) -> list[str]:
    """Reasons for places seen more often than expected, or (4D) less often."""
    reasons = []
    extra = [place for place in places if place.count > temporal]
    if extra:
        expected = f" where {temporal} temporal positions are expected" if temporal > 1 else ""
        first = f"{_count(extra[0].count)} slices at {_mm(extra[0].at)} mm along the slice normal"
        reasons.append(first + expected + _more(len(extra) - 1, "with extra slices"))
    short = [place for place in places if place.count < temporal]
    if short:
        first = f"the slice at {_mm(short[0].at)} mm has {short[0].count} of {temporal}"
        reasons.append(f"{first} temporal positions" + _more(len(short) - 1, "short too"))
    return reasons


def _spacing(places: list[_Place]) -> list[str]:
    """Reasons for gaps and uneven steps between consecutive places."""
    if len(places) < 3:
        return []
    steps = [(a.at, b.at, b.at - a.at) for a, b in pairwise(places)]
    nominal = median(step for _, _, step in steps)
    gaps: list[tuple[float, float, int]] = []
    uneven: list[tuple[float, float, float]] = []
    for start, end, step in steps:
        multiple = _multiple(step, nominal)
        if multiple is None:
            uneven.append((start, end, step))
        elif multiple > 1:
            gaps.append((start, end, multiple - 1))
    reasons = [_gaps_reason(gaps)] if gaps else []
    return reasons + ([_uneven_reason(uneven, nominal)] if uneven else [])


def _multiple(step: float, nominal: float) -> int | None:
    """k when `step` is about k times `nominal` (k = 1: fine, k >= 2: a gap), else None."""
    slack = max(SPACING_SLACK * nominal, SAME_PLACE)
    k = max(round(step / nominal), 1)
    return k if abs(step - k * nominal) <= slack else None


def _gaps_reason(gaps: list[tuple[float, float, int]]) -> str:
    if len(gaps) == 1:
        start, end, missing = gaps[0]
        return f"a gap {_between(start, end)} along the slice normal ({_missing(missing)})"
    total = sum(missing for _, _, missing in gaps)
    first, second = gaps[0], gaps[1]
    return (
        f"{len(gaps)} gaps ({_missing(total)}); the first {_between(first[0], first[1])}, "
        f"the second {_between(second[0], second[1])} along the slice normal"
    )


def _uneven_reason(uneven: list[tuple[float, float, float]], nominal: float) -> str:
    start, end, step = uneven[0]
    where = f"uneven spacing {_between(start, end)}"
    sizes = f"({_mm(step, 3)} mm where the others are {_mm(nominal, 3)} mm)"
    others = len(uneven) - 1
    more = f" (and {others} more uneven step{'s' if others != 1 else ''})" if others else ""
    return f"{where} {sizes}{more}"


def _complete_note(places: list[_Place], temporal: int, unplaced: int) -> str:
    """E.g. "98 slices 2.5 mm apart, no gap"; without a gap the mean step is the spacing."""
    kind = ("position" if len(places) == 1 else "positions") if temporal > 1 else "slices"
    parts = [f"{len(places)} {kind}"]
    if len(places) > 1:
        parts[0] += f" {_mm((places[-1].at - places[0].at) / (len(places) - 1), 3)} mm apart"
    if temporal > 1:
        parts.append(f"{temporal} temporal positions each")
    parts.append("no gap")
    if unplaced:
        parts.append(f"{unplaced} without a usable position not checked")
    return ", ".join(parts)


def _between(start: float, end: float) -> str:
    return f"between {_mm(start)} mm and {_mm(end)} mm"


def _missing(slices: int) -> str:
    return f"about {slices} slice{'s' if slices != 1 else ''} missing"


def _more(others: int, what: str) -> str:
    position = "position" if others == 1 else "positions"
    return f" (and {others} more {position} {what})" if others else ""


def _count(value: int) -> str:
    return _WORDS.get(value, str(value))


def _mm(value: float, digits: int = 2) -> str:
    """Millimetres in a short form: 12.5, -0.63, 1250 (never 12.500000 or -0)."""
    return f"{round(value, digits) + 0.0:g}"
