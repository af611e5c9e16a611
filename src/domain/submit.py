"""A submit that did not succeed, and what to do next: the types of the retry decision."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SubmitFailure:
    """Why one submit did not succeed."""

    reason: str
    suspect_model: bool = False  # a bare 500 from generation 2: maybe an unknown model
    maybe_held: bool = False  # the whole archive went and no answer came: maybe a task


@dataclass(frozen=True)
class SubmitCounts:
    """A job's submit history, this failure included."""

    attempts: int
    suspect_answers: int  # bare 500s in a row
    ambiguous_submits: int  # submits that may have left a task on the server


@dataclass(frozen=True)
class RetryDecision:
    """Try again after `wait` seconds (None: give up), with the timeline's words."""

    wait: float | None
    message: str
