"""Refusing regular expressions that would take too long to match (catastrophic backtracking).

Python's `re` cannot be interrupted, and a fingerprint's pattern runs on every quiet
series, so a pattern like `(a+)+$` could stall routing. At load, each pattern that could
backtrack (a group that holds a quantifier) is tried on test strings of DICOM length in
a child process; one that takes longer than TIME_LIMIT is refused. It is a heuristic:
it catches the classic shapes, not every possible slow pattern.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

TIME_LIMIT = 0.5  # seconds, per pattern
PROBE_LENGTH = 64  # LO, the longest VR matched here
_RISKY = re.compile(r"\([^)]*[+*}][^)]*\)\s*[+*{]|\([^)]*\|[^)]*\)\s*[+*{]")

_CHILD = r"""
import json, re, sys
patterns, length = json.loads(sys.stdin.read())
for name, pattern in patterns:
    print(name, flush=True)
    letters = sorted({c for c in pattern if c.isalnum()} | {"a", "0", " "})
    compiled = re.compile(pattern, re.IGNORECASE)
    for c in letters:
        for probe in (c * length, c * length + "!", c * (length // 2) + "!" + c * (length // 2)):
            compiled.search(probe)
print("done", flush=True)
"""


def risky(pattern: str) -> bool:
    """Whether a pattern has a shape that can backtrack catastrophically."""
    return bool(_RISKY.search(pattern))


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
    return None if done.stdout.split()[-1:] == ["done"] else checked[0][0]
