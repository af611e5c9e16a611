"""The types routing decides with: an open series round as routing sees it, and what a
fingerprint decides about the rounds of a study (see isdr.fingerprints.decide)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from isdr.domain.stack import SliceFacts, parse_decimals
from isdr.domain.states import SeriesState


@dataclass(frozen=True)
class SeriesFacts:
    """The tags of a series that fingerprints look at."""

    modality: str
    series_description: str
    study_description: str
    sop_class_uids: tuple[str, ...]
    calling_ae_title: str = ""  # of the association that sent the series


@dataclass(frozen=True)
class Past:
    """What a fingerprint decided about a round in an earlier round of routing."""

    fingerprint: str
    job: bool  # it went into a job; else it was given up
    reason: str = ""


@dataclass(frozen=True)
class OpenRound:
    """A series round still open (receiving or waiting), as routing sees it."""

    id: int
    facts: SeriesFacts
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    # When the one association that sent all of it (2 instances or more) was released,
    # after its last instance; None: not so (several associations, none, or not yet).
    released_at: datetime | None = None
    past: tuple[Past, ...] = ()
    slices: tuple[SliceFacts, ...] = ()  # read only when a fingerprint checks completeness
    state: str = "receiving"  # where it stands now, and why
    state_reason: str = ""
    wait_until: datetime | None = None

    def decided_by(self, name: str) -> bool:
        """Whether the fingerprint `name` already decided about this round."""
        return any(past.fingerprint == name for past in self.past)


@dataclass(frozen=True)
class Member:
    """One round of a job, and the trigger it met ("" for a flat fingerprint)."""

    round_id: int
    trigger: str


@dataclass(frozen=True)
class Take:
    """Make one job of these rounds."""

    fingerprint: str
    members: tuple[Member, ...]

    @property
    def round_ids(self) -> tuple[int, ...]:
        """The rounds of the job, as the other decisions name theirs."""
        return tuple(member.round_id for member in self.members)


@dataclass(frozen=True)
class Wait:
    """The rounds are settled, but the fingerprint waits: for a trigger's series, or for a
    round to be complete, until `until`."""

    fingerprint: str
    round_ids: tuple[int, ...]
    reason: str
    until: datetime


@dataclass(frozen=True)
class GiveUp:
    """The fingerprint will not take these rounds: said in `reason`."""

    fingerprint: str
    round_ids: tuple[int, ...]
    reason: str
    incomplete: bool = False  # it gave up waiting for a round to be complete


@dataclass(frozen=True)
class Pending:
    """A round the fingerprint may take is still arriving: nothing is decided yet."""

    fingerprint: str
    round_ids: tuple[int, ...]


Decision = Take | Wait | GiveUp | Pending


@dataclass(frozen=True)
class Outcome:
    """A round's new state, and why."""

    round_id: int
    state: SeriesState
    reason: str
    until: datetime | None = None  # waiting: when to look again at the latest


@dataclass(frozen=True)
class Routing:
    """What one look at a study decided: per fingerprint, and per round."""

    decisions: list[Decision] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


_Position = tuple[float, float, float]
_Orientation = tuple[float, float, float, float, float, float]


def slice_facts(
    position: str, orientation: str, images: int | None, temporal: int | None
) -> SliceFacts:
    """Where an instance sits in its stack, from the text of its tags ("" when absent)."""
    return SliceFacts(
        cast(_Position | None, parse_decimals(position, 3)),
        cast(_Orientation | None, parse_decimals(orientation, 6)),
        images_in_acquisition=images,
        temporal_positions=temporal,
    )
