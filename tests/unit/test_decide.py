"""Routing a study: which rounds become jobs, wait, or end; time and geometry are inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from isdr.domain.fingerprint import Fingerprint
from isdr.domain.routing import (
    GiveUp,
    Member,
    OpenRound,
    Past,
    Pending,
    SeriesFacts,
    Take,
    Wait,
)
from isdr.domain.stack import SliceFacts
from isdr.domain.states import SeriesState
from isdr.fingerprints.decide import decide, route_study

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POST_AFTER = 10.0
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def fingerprint(**keys: Any) -> Fingerprint:
    return Fingerprint.model_validate(
        {"inference_server_url": "https://is.example/api/", "model_human_readable_id": "m"} | keys
    )


CT_MR = fingerprint(
    triggers=[
        {"name": "CT", "modality_regex": "^CT$"},
        {"name": "MR T1", "modality_regex": "^MR$", "series_description_regex": "T1"},
    ],
    max_wait=600,
)


def stack(count: int, missing: tuple[int, ...] = ()) -> tuple[SliceFacts, ...]:
    return tuple(
        SliceFacts((0.0, 0.0, 2.5 * index), AXIAL) for index in range(count) if index not in missing
    )


def round_(
    number: int,
    modality: str = "CT",
    description: str = "",
    *,
    last: float = -60.0,
    first: float = -120.0,
    count: int = 10,
    **more: Any,
) -> OpenRound:
    """A round whose last instance came `last` seconds from T0 (quiet when <= -10)."""
    return OpenRound(
        number, SeriesFacts(modality, description, "", ()), count,
        T0 + timedelta(seconds=first), T0 + timedelta(seconds=last), **more,
    )  # fmt: skip


def test_a_flat_fingerprint_takes_each_quiet_series_on_its_own() -> None:
    flat = fingerprint(modality_regex="CT")
    decisions = decide([round_(1), round_(2)], "flat.json", flat, T0, POST_AFTER)
    assert decisions == [
        Take("flat.json", (Member(1, ""),)),
        Take("flat.json", (Member(2, ""),)),
    ]


def test_a_series_still_arriving_is_pending() -> None:
    flat = fingerprint(modality_regex="CT")
    assert decide([round_(1, last=-2)], "f", flat, T0, POST_AFTER) == [Pending("f", (1,))]


def test_a_study_with_a_ct_and_an_mr_makes_one_job_holding_both() -> None:
    rounds = [round_(1, "CT"), round_(2, "MR", "T1 axial"), round_(3, "MR", "T2 axial")]
    assert decide(rounds, "ct-mr.json", CT_MR, T0, POST_AFTER) == [
        Take("ct-mr.json", (Member(1, "CT"), Member(2, "MR T1")))
    ]


@pytest.mark.parametrize(
    ("rounds", "now", "expected"),
    [
        # the MR is not there yet: wait until the first instance of the CT + max_wait
        ([round_(1, "CT")], T0, Wait("f", (1,), "waiting until 2026-12-03 12:08:00 UTC: "
                                     "no series for trigger 'MR T1'", T0 + timedelta(seconds=480))),
        # ... and after that, the study ends visibly
        ([round_(1, "CT")], T0 + timedelta(seconds=480),
         GiveUp("f", (1,), "not matched: no series for trigger 'MR T1'")),
        # the MR still arriving: nothing is decided, the CT waits with it
        ([round_(1, "CT"), round_(2, "MR", "T1", last=-1)], T0, Pending("f", (1, 2))),
    ],
)  # fmt: skip
def test_a_study_in_part_waits_then_ends_visibly(
    rounds: list[OpenRound], now: datetime, expected: object
) -> None:
    assert decide(rounds, "f", CT_MR, now, POST_AFTER) == [expected]


def test_counts_of_series_are_conditions_not_choices() -> None:
    one_ct = fingerprint(triggers=[{"name": "CT", "modality_regex": "CT", "max_series": 1}])
    two = [round_(1), round_(2)]
    assert decide(two, "f", one_ct, T0, POST_AFTER) == [
        GiveUp("f", (1, 2), "not matched: 2 series for trigger 'CT', at most 1 wanted")
    ]
    two_mr = fingerprint(triggers=[{"name": "MR", "modality_regex": "MR", "min_series": 2}])
    [waiting] = decide([round_(1, "MR")], "f", two_mr, T0, POST_AFTER)
    assert isinstance(waiting, Wait) and "1 of 2 series for trigger 'MR'" in waiting.reason


def test_a_series_with_too_few_instances_does_not_meet_a_trigger() -> None:
    ct = fingerprint(triggers=[{"name": "CT", "modality_regex": "CT", "min_instances": 20}])
    decisions = decide([round_(1, count=30), round_(2, count=3)], "f", ct, T0, POST_AFTER)
    assert decisions == [
        Take("f", (Member(1, "CT"),)),
        GiveUp("f", (2,), "not matched: fewer than 20 instances"),
    ]
    flat = fingerprint(modality_regex="CT", min_instances=20)
    assert decide([round_(3, count=3)], "f", flat, T0, POST_AFTER) == [
        GiveUp("f", (3,), "not matched: fewer than 20 instances")
    ]


def test_a_round_a_fingerprint_decided_before_is_not_decided_again() -> None:
    taken = round_(1, past=(Past("flat.json", job=True),))
    assert decide([taken], "flat.json", fingerprint(modality_regex="CT"), T0, POST_AFTER) == []


def test_association_end_settles_a_round_only_for_fingerprints_that_ask() -> None:
    just_sent = round_(1, last=-0.6, released_at=T0 - timedelta(seconds=0.5))
    eager = fingerprint(modality_regex="CT", complete_on_association_end=True)
    assert decide([just_sent], "f", eager, T0, POST_AFTER) == [Take("f", (Member(1, ""),))]
    patient = fingerprint(modality_regex="CT")
    assert decide([just_sent], "f", patient, T0, POST_AFTER) == [Pending("f", (1,))]


def test_a_release_counts_only_once_no_next_association_went_on_for_half_a_second() -> None:
    eager = fingerprint(modality_regex="CT", complete_on_association_end=True)
    released = round_(1, last=-0.3, released_at=T0 - timedelta(seconds=0.2))
    assert decide([released], "f", eager, T0, POST_AFTER) == [Pending("f", (1,))]


def test_a_stack_with_a_gap_waits_saying_where_then_ends_incomplete() -> None:
    checked = fingerprint(modality_regex="CT", check_geometry=True, max_wait=600)
    gapped = round_(1, count=9, slices=stack(10, missing=(4,)))
    [waiting] = decide([gapped], "f", checked, T0, POST_AFTER)
    assert isinstance(waiting, Wait) and "series 1 (CT): a gap between" in waiting.reason
    [ended] = decide([gapped], "f", checked, T0 + timedelta(seconds=600), POST_AFTER)
    assert isinstance(ended, GiveUp) and ended.incomplete
    assert ended.reason.startswith("incomplete: series 1 (CT): a gap between")
    whole = round_(1, count=10, slices=stack(10))
    assert decide([whole], "f", checked, T0, POST_AFTER) == [Take("f", (Member(1, ""),))]


def test_an_expected_count_from_the_fingerprint_holds_a_short_series() -> None:
    counted = fingerprint(modality_regex="CT", expected_instances=12)
    [waiting] = decide([round_(1, count=10)], "f", counted, T0, POST_AFTER)
    assert isinstance(waiting, Wait) and "10 of 12" in waiting.reason


@pytest.mark.parametrize(
    ("rounds", "state", "reason"),
    [
        ([round_(1, "US")], SeriesState.UNMATCHED, "no fingerprint matched (2 checked)"),
        # flat.json takes it at once; it waits on for ct-mr.json's MR
        ([round_(1, "CT")], SeriesState.WAITING,
         "ct-mr.json: waiting until 2026-12-03 12:08:00 UTC: no series for trigger 'MR T1'"),
        ([round_(1, "CT", past=(Past("ct-mr.json", job=False, reason="not matched: x"),))],
         SeriesState.MATCHED, "matched flat.json; ct-mr.json: not matched: x"),
        ([round_(1, "MR", "T1")], SeriesState.WAITING,
         "ct-mr.json: waiting until 2026-12-03 12:08:00 UTC: no series for trigger 'CT'"),
    ],
)  # fmt: skip
def test_each_round_ends_in_a_state_with_the_reason_in_words(
    rounds: list[OpenRound], state: SeriesState, reason: str
) -> None:
    fingerprints = {"flat.json": fingerprint(modality_regex="^CT$"), "ct-mr.json": CT_MR}
    routing = route_study(rounds, fingerprints, T0, POST_AFTER)
    [outcome] = routing.outcomes
    assert (outcome.state, outcome.reason) == (state, reason)


def test_a_round_still_arriving_keeps_receiving() -> None:
    routing = route_study([round_(1, last=-1)], {"f": fingerprint()}, T0, POST_AFTER)
    assert routing.outcomes == []


def test_one_series_serves_several_fingerprints() -> None:
    fingerprints = {"flat.json": fingerprint(modality_regex="^CT$"), "ct-mr.json": CT_MR}
    rounds = [round_(1, "CT"), round_(2, "MR", "T1")]
    routing = route_study(rounds, fingerprints, T0, POST_AFTER)
    assert sorted(d.fingerprint for d in routing.decisions if isinstance(d, Take)) == [
        "ct-mr.json",
        "flat.json",
    ]
    states = {o.round_id: o.state for o in routing.outcomes}
    assert states == {1: SeriesState.MATCHED, 2: SeriesState.MATCHED}
