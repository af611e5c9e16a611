r"""Refusing regular expressions that would take too long to match (catastrophic backtracking).

Python's `re` cannot be interrupted and holds the interpreter while it runs, so a slow
pattern would stall routing and, through the interpreter lock, receiving too. A pattern
is searched in at most SEARCHED characters of a value (isdr.domain.text), which bounds
the polynomial cases (`.*lung` on a megabyte). The exponential ones are caught at load:
each pattern whose parsed shape can backtrack (a repeat holding another repeat or an
alternation, at any depth of groups, or several unbounded repeats) is tried on test
strings of SEARCHED characters in a child process; one that takes longer than TIME_LIMIT
is refused. It is a heuristic: it catches the classic shapes (`(a+)+$`, `((a+))+$`,
`(a|aa)+$`, `(\w+\s?)*$`, `(.*a){20}`...), not every possible slow pattern.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from re import _parser as sre_parse  # type: ignore[attr-defined]  # re's own (3.11+)
from typing import Any

from isdr.domain.text import SEARCHED

TIME_LIMIT = 0.5  # seconds, per pattern
PROBE_LENGTH = SEARCHED
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_UNBOUNDED = 0xFFFFFFFF  # sre's MAXREPEAT

_CHILD = r"""
import json, re, sys, time
patterns, length = json.loads(sys.stdin.read())
for name, pattern in patterns:
    print(name, flush=True)
    began = time.monotonic()
    compiled = re.compile(pattern, re.IGNORECASE)
    letters = sorted({c for c in pattern if c.isalnum()} | {"a", "A", "0", " ", "."})
    word = "".join(c for c in pattern if c.isalnum())[:8] or "a"
    letters.append(word)
    for c in letters:
        for probe in (
            c * (length // len(c)),
            c * (length // len(c)) + "!",
            c * (length // len(c) // 2) + "!" + c * (length // len(c) // 2),
            (c + " ") * (length // (len(c) + 1)) + "!",
            c * 16 + "!" * (length - 16),
            c * 24,
        ):
            compiled.search(probe)
    print(name, time.monotonic() - began, flush=True)
print("done", flush=True)
"""


def risky(pattern: str) -> bool:
    """Whether a pattern has a shape that can backtrack catastrophically."""
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return True  # the loader refuses it anyway; probing costs nothing more
    return _nested(parsed, inside_repeat=False) or _unbounded_repeats(parsed) >= 2


def _nested(items: Any, *, inside_repeat: bool) -> bool:
    """A repeat (or alternation) inside a repeat, through groups at any depth."""
    for op, value in items:
        name = str(op)
        if name in _REPEATS:
            low, high, body = value
            if inside_repeat and (high > 1 or low != high):
                return True
            if _nested(body, inside_repeat=inside_repeat or high > 1):
                return True
        elif name == "BRANCH":
            if inside_repeat:
                return True
            if any(_nested(branch, inside_repeat=False) for branch in value[1]):
                return True
        elif name in ("SUBPATTERN", "ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
            body = value[-1]
            if _nested(body, inside_repeat=inside_repeat):
                return True
    return False


def _unbounded_repeats(items: Any) -> int:
    count = 0
    for op, value in items:
        name = str(op)
        if name in _REPEATS:
            count += (value[1] == _UNBOUNDED) + _unbounded_repeats(value[2])
        elif name == "BRANCH":
            count += max(_unbounded_repeats(branch) for branch in value[1])
        elif name in ("SUBPATTERN", "ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
            count += _unbounded_repeats(value[-1])
    return count


def too_slow(patterns: dict[str, str]) -> str | None:
    """The name of the first pattern that takes longer than TIME_LIMIT, else None."""
    checked = [(name, pattern) for name, pattern in patterns.items() if risky(pattern)]
    if not checked:
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps([checked, PROBE_LENGTH]),
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT * len(checked) + 2.0,  # and the child's start
        )
    except subprocess.TimeoutExpired as exc:
        started = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        names = (started or "").split()
        return names[-1] if names else checked[0][0]
    if done.stdout.split()[-1:] != ["done"]:
        return checked[0][0]
    return _slowest(done.stdout)


def _slowest(report: str) -> str | None:
    """The first pattern whose trials took over TIME_LIMIT, from the child's lines."""
    for line in report.splitlines():
        name, _, seconds = line.partition(" ")
        if seconds and float(seconds) > TIME_LIMIT:
            return name
    return None
