"""Routing: which open series rounds of a study become jobs, wait, or end. A pure function
of the rounds, the fingerprints and the time.

A flat fingerprint is one trigger that takes one series at a time, as the original relay
did. A fingerprint with `triggers` takes a study: it waits until every open series of the
study that meets one of its triggers has settled, gives each such series to the first
trigger it meets (in the order they are listed), and makes one job of them all once every
trigger has its series and each of them is complete. A series is settled when it has been
quiet for POST_AFTER seconds, or, when the fingerprint asks, once the association that
sent all of it was released. Completeness beyond that (an expected count, a stack's
geometry) is the trigger's. What cannot be met by the fingerprint's `max_wait` (from the
first instance of the series it waits for) ends visibly, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from isdr.domain.fingerprint import Fingerprint, Trigger
from isdr.domain.routing import (
    Decision,
    GiveUp,
    Member,
    OpenRound,
    Outcome,
    Pending,
    Routing,
    SeriesFacts,
    Take,
    Wait,
)
from isdr.domain.stack import StackVerdict, check_count, check_geometry, expected_count
from isdr.domain.states import SeriesState
from isdr.fingerprints.match import failed_rules


def route_study(
    rounds: Sequence[OpenRound],
    fingerprints: Mapping[str, Fingerprint],
    now: datetime,
    post_after: float,
) -> Routing:
    """Decide about the open rounds of one study (one patient's StudyInstanceUID)."""
    decisions: list[Decision] = []
    for name in sorted(fingerprints):
        decisions += decide(rounds, name, fingerprints[name], now, post_after)
    return Routing(decisions, outcomes(rounds, decisions, len(fingerprints), now, post_after))


def decide(
    rounds: Sequence[OpenRound],
    name: str,
    fingerprint: Fingerprint,
    now: datetime,
    post_after: float,
) -> list[Decision]:
    """What one fingerprint decides about the open rounds of a study."""
    triggers = fingerprint.rules()
    relevant = [
        r for r in rounds
        if not r.decided_by(name) and any(not failed_rules(r.facts, t) for t in triggers)
    ]  # fmt: skip
    if not fingerprint.study_level:
        groups = [[r] for r in relevant]
    else:
        groups = [relevant] if relevant else []
    return [d for group in groups for d in _decide_group(group, name, fingerprint, now, post_after)]


ASSOCIATION_GRACE = 0.5  # seconds after a release in which no new association went on


def settled(round_: OpenRound, fingerprint: Fingerprint, now: datetime, post_after: float) -> bool:
    """Whether the sender is done with the round, as the fingerprint judges it: quiet for
    POST_AFTER, or (when it asks) released by the one association that sent all of it,
    ASSOCIATION_GRACE ago, with nothing since: a sender that goes on with a next
    association for the same series keeps it open."""
    if round_.last_received_at <= now - timedelta(seconds=post_after):
        return True
    released = round_.released_at
    return (
        fingerprint.complete_on_association_end
        and released is not None
        and released <= now - timedelta(seconds=ASSOCIATION_GRACE)
    )


def _decide_group(
    group: list[OpenRound], name: str, fingerprint: Fingerprint, now: datetime, post_after: float
) -> list[Decision]:
    ids = tuple(r.id for r in group)
    if not all(settled(r, fingerprint, now, post_after) for r in group):
        return [Pending(name, ids)]
    decision = _decide_settled(group, name, fingerprint, now)
    if isinstance(decision, list):
        return decision
    if not isinstance(decision, Take):
        return [decision]
    taken = {member.round_id for member in decision.members}
    few = tuple(r.id for r in group if r.id not in taken)
    if not few:
        return [decision]
    least = min(t.min_instances for t in fingerprint.rules())
    return [decision, GiveUp(name, few, f"not matched: fewer than {least} instances")]


def _decide_settled(
    group: list[OpenRound], name: str, fingerprint: Fingerprint, now: datetime
) -> Decision | list[Decision]:
    ids = tuple(r.id for r in group)
    until = min(r.first_received_at for r in group) + timedelta(seconds=fingerprint.max_wait)
    triggers = fingerprint.rules()
    assigned = {r.id: _first_trigger(r, triggers) for r in group}
    if not fingerprint.study_level and assigned[group[0].id] is None:
        return GiveUp(name, ids, f"not matched: fewer than {triggers[0].min_instances} instances")
    by_trigger = {t.label: [r for r in group if assigned[r.id] is t] for t in triggers}
    unmet = _unmet(triggers, by_trigger)
    if unmet is not None:
        too_many = unmet.startswith("too many")
        if too_many or now >= until:
            return GiveUp(name, ids, f"not matched: {unmet.removeprefix('too many: ')}")
        return Wait(name, ids, f"waiting until {until:%Y-%m-%d %H:%M:%S} UTC: {unmet}", until)
    taken = [r for r in group if assigned[r.id] is not None]
    problems = _incomplete(taken, assigned)
    if problems:
        first = problems[0][1]
        if now >= until:
            return _give_up_incomplete(name, ids, problems)
        waiting = f"incomplete until {until:%Y-%m-%d %H:%M:%S} UTC at the latest: {first}"
        return Wait(name, ids, waiting, until)
    members = tuple(Member(r.id, _trigger_name(assigned[r.id])) for r in taken)
    return Take(name, members)


def _give_up_incomplete(
    name: str, ids: tuple[int, ...], problems: list[tuple[int, str]]
) -> list[Decision]:
    """The incomplete rounds end `incomplete`, each with where; the others of the group
    are not matched, and say why."""
    found: list[Decision] = [
        GiveUp(name, (round_id,), f"incomplete: {problem}", incomplete=True)
        for round_id, problem in problems
    ]
    incomplete = {round_id for round_id, _ in problems}
    rest = tuple(round_id for round_id in ids if round_id not in incomplete)
    if rest:
        found.append(GiveUp(name, rest, f"not matched: incomplete: {problems[0][1]}"))
    return found


def _first_trigger(round_: OpenRound, triggers: Sequence[Trigger]) -> Trigger | None:
    """The first trigger the round meets, its instance count included."""
    for trigger in triggers:
        if round_.instance_count >= trigger.min_instances and not failed_rules(
            round_.facts, trigger
        ):
            return trigger
    return None


def _trigger_name(trigger: Trigger | None) -> str:
    return "" if trigger is None else trigger.name


def _unmet(triggers: Sequence[Trigger], by_trigger: Mapping[str, list[OpenRound]]) -> str | None:
    """Why the triggers are not all met (the first one that is not); None when they are.
    "too many: ..." when a trigger has more series than it takes (waiting cannot help,
    so that is said first, whichever trigger it is)."""
    for trigger in triggers:
        found = len(by_trigger[trigger.label])
        if trigger.max_series is not None and found > trigger.max_series:
            return (
                f"too many: {found} series for trigger {trigger.label!r}, "
                f"at most {trigger.max_series} wanted"
            )
    for trigger in triggers:
        found = len(by_trigger[trigger.label])
        if found < trigger.min_series:
            if found == 0:
                return f"no series for trigger {trigger.label!r}"
            return f"{found} of {trigger.min_series} series for trigger {trigger.label!r}"
    return None


def _incomplete(
    taken: list[OpenRound], assigned: Mapping[int, Trigger | None]
) -> list[tuple[int, str]]:
    """Each round found incomplete, with where; [] when all are complete."""
    found = []
    for round_ in taken:
        trigger = assigned[round_.id]
        if trigger is None:
            continue
        verdict = completeness(round_, trigger)
        if not verdict.complete:
            found.append(
                (round_.id, f"series {round_.id} ({_named(round_.facts)}): {verdict.reason}")
            )
    return found


def completeness(round_: OpenRound, trigger: Trigger) -> StackVerdict:
    """Whether a settled round is complete for a trigger: its expected count, its geometry."""
    expected = trigger.expected_instances
    if expected == "from_data":
        stated = expected_count(round_.slices)
        if stated is not None:
            verdict = check_count(round_.instance_count, stated, "as its data states")
            if not verdict.complete:
                return verdict
    elif expected is not None:
        verdict = check_count(round_.instance_count, expected, "as the fingerprint states")
        if not verdict.complete:
            return verdict
    if trigger.check_geometry:
        return check_geometry(round_.slices)
    return StackVerdict(True, "")


def _named(facts: SeriesFacts) -> str:
    words = [facts.modality or "no modality"]
    if facts.series_description:
        words.append(repr(facts.series_description[:64]))
    return ", ".join(words)


def outcomes(
    rounds: Sequence[OpenRound],
    decisions: Sequence[Decision],
    checked: int,
    now: datetime,
    post_after: float,
) -> list[Outcome]:
    """Each round's new state: waiting while a fingerprint waits for it (or its study),
    else, once no fingerprint may still take it, matched, incomplete or unmatched."""
    found = []
    for round_ in rounds:
        outcome = _outcome(round_, decisions, checked, now, post_after)
        if outcome is not None and (outcome.state, outcome.reason, outcome.until) != (
            round_.state, round_.state_reason, round_.wait_until,
        ):  # fmt: skip
            found.append(outcome)
    return found


def _outcome(
    round_: OpenRound, decisions: Sequence[Decision], checked: int, now: datetime, post_after: float
) -> Outcome | None:
    mine = [d for d in decisions if round_.id in d.round_ids]
    if any(isinstance(d, Pending) for d in mine):
        return None  # still arriving for some fingerprint: it stays receiving
    waits = [d for d in mine if isinstance(d, Wait)]
    if waits:
        reason = "; ".join(f"{w.fingerprint}: {w.reason}" for w in waits)
        return Outcome(round_.id, SeriesState.WAITING, reason, min(w.until for w in waits))
    taken = [p.fingerprint for p in round_.past if p.job]
    taken += [d.fingerprint for d in mine if isinstance(d, Take)]
    given_up = [(p.fingerprint, p.reason) for p in round_.past if not p.job]
    given_up += [(d.fingerprint, d.reason) for d in mine if isinstance(d, GiveUp)]
    quiet = round_.last_received_at <= now - timedelta(seconds=post_after)
    if not taken and not given_up:
        if not quiet:
            return None
        return Outcome(
            round_.id, SeriesState.UNMATCHED, f"no fingerprint matched ({checked} checked)"
        )
    ended = "; ".join(f"{name}: {reason}" for name, reason in given_up)
    if taken:
        reason = "matched " + ", ".join(sorted(taken)) + (f"; {ended}" if ended else "")
        return Outcome(round_.id, SeriesState.MATCHED, reason)
    incomplete = any(isinstance(d, GiveUp) and d.incomplete for d in mine) or any(
        reason.startswith("incomplete") for _, reason in given_up
    )
    state = SeriesState.INCOMPLETE if incomplete else SeriesState.UNMATCHED
    return Outcome(round_.id, state, ended)
