"""Routing in the database: the studies with open rounds, those rounds as routing sees
them, and what was decided (jobs, decisions, the rounds' new states) in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, and_, func, or_, select
from sqlalchemy.orm import Session

from isdr.db.jobs import change_state, new_job
from isdr.db.models import Instance, Series, SeriesDecision
from isdr.db.series import SEVERAL
from isdr.domain.fingerprint import Fingerprint
from isdr.domain.routing import (
    GiveUp,
    OpenRound,
    Outcome,
    Past,
    Routing,
    SeriesFacts,
    Take,
    slice_facts,
)
from isdr.domain.stack import SliceFacts
from isdr.domain.states import JobState, SeriesState

logger = logging.getLogger(__name__)

OPEN = (SeriesState.RECEIVING, SeriesState.WAITING)


@dataclass(frozen=True)
class Study:
    """One patient's study: the unit a fingerprint with triggers decides on."""

    patient_id: str
    study_instance_uid: str


def studies_to_route(
    engine: Engine, cutoff: datetime, now: datetime, limit: int = 100
) -> list[Study]:
    """Studies with an open round that may be decided now: receiving and quiet since
    `cutoff` or sent by an association that was released, or waiting and due to be looked
    at again; those longest ready first. A waiting round whose time has not come costs
    nothing: a study with one waits for its other rounds, or for the time."""
    ready = or_(
        and_(
            Series.state == SeriesState.RECEIVING,
            or_(Series.last_received_at <= cutoff, Series.association_ended_at.is_not(None)),
        ),
        and_(
            Series.state == SeriesState.WAITING,
            or_(Series.wait_until.is_(None), Series.wait_until <= now),
        ),
    )
    with Session(engine) as session:
        rows = session.execute(
            select(Series.patient_id, Series.study_instance_uid)
            .where(Series.state.in_(OPEN), ready)
            .group_by(Series.patient_id, Series.study_instance_uid)
            .order_by(func.min(Series.last_received_at))
            .limit(limit)
        ).all()
    return [Study(row[0], row[1]) for row in rows]


def open_rounds(engine: Engine, study: Study, *, with_slices: bool) -> list[OpenRound]:
    """The study's open rounds, with what fingerprints decided of them before, and their
    slices' places when a fingerprint checks completeness."""
    with Session(engine) as session:
        rows = session.scalars(select(Series).where(*_open_in(study)).order_by(Series.id)).all()
        ids = [row.id for row in rows]
        past = _past_decisions(session, ids)
        slices = _slices(session, ids) if with_slices else {}
        return [_open_round(row, past.get(row.id, ()), slices.get(row.id, ())) for row in rows]


def study_of_series(engine: Engine, series_id: int) -> tuple[list[OpenRound], list[str]]:
    """Every round of the study a series round belongs to (but discarded ones), as routing
    would see them fresh, with their slices, and their SeriesInstanceUIDs: for a dry run
    of fingerprints. ([], []) when there is no such round."""
    with Session(engine) as session:
        found = session.get(Series, series_id)
        if found is None:
            return [], []
        rows = session.scalars(
            select(Series)
            .where(
                Series.patient_id == found.patient_id,
                Series.study_instance_uid == found.study_instance_uid,
                Series.state != SeriesState.DISCARDED,
            )
            .order_by(Series.id)
        ).all()
        slices = _slices(session, [row.id for row in rows])
        rounds = [_open_round(row, (), slices.get(row.id, ())) for row in rows]
        return rounds, [row.series_instance_uid for row in rows]


def _open_in(study: Study) -> tuple[ColumnElement[bool], ...]:
    """The conditions of a study's open rounds."""
    return (
        Series.state.in_(OPEN),
        Series.patient_id == study.patient_id,
        Series.study_instance_uid == study.study_instance_uid,
    )


def _open_round(row: Series, past: Sequence[Past], slices: Sequence[SliceFacts]) -> OpenRound:
    facts = SeriesFacts(
        row.modality, row.series_description, row.study_description,
        tuple(row.sop_class_uids or ()), row.calling_ae_title,
    )  # fmt: skip
    return OpenRound(
        row.id, facts, row.instance_count, row.first_received_at, row.last_received_at,
        released_at=_released_at(row), past=tuple(past), slices=tuple(slices),
        state=row.state, state_reason=row.state_reason, wait_until=row.wait_until,
    )  # fmt: skip


def _released_at(row: Series) -> datetime | None:
    """When the one association that sent all of the round (2 instances or more: a sender
    that opens one association per instance is judged by the quiet timer) was released,
    after its last instance; None when that is not so."""
    ended = row.association_ended_at
    whole = row.association_uid not in (None, "", SEVERAL) and row.instance_count >= 2
    return ended if whole and ended is not None and ended >= row.last_received_at else None


def _past_decisions(session: Session, ids: list[int]) -> dict[int, list[Past]]:
    found: dict[int, list[Past]] = {}
    rows = session.scalars(select(SeriesDecision).where(SeriesDecision.series_id.in_(ids)))
    for row in rows:
        found.setdefault(row.series_id, []).append(
            Past(row.fingerprint_name, row.job_id is not None, row.reason)
        )
    return found


def _slices(session: Session, ids: list[int]) -> dict[int, list[SliceFacts]]:
    found: dict[int, list[SliceFacts]] = {}
    rows = session.execute(
        select(
            Instance.series_id, Instance.image_position, Instance.image_orientation,
            Instance.images_in_acquisition, Instance.temporal_positions,
        ).where(Instance.series_id.in_(ids))
    )  # fmt: skip
    for series_id, position, orientation, images, temporal in rows:
        facts = slice_facts(position or "", orientation or "", images, temporal)
        found.setdefault(series_id, []).append(facts)
    return found


def apply_routing(
    engine: Engine,
    study: Study,
    seen: Sequence[OpenRound],
    routing: Routing,
    fingerprints: Mapping[str, Fingerprint],
    now: datetime,
) -> list[int]:
    """Record what routing decided about a study; the new jobs' ids.

    Nothing happens when a round it decided about changed since it was read (`seen`: an
    instance arrived), nor, when a fingerprint with triggers decided about the study, when any of
    its open rounds changed or a new one opened: the check and the changes are one
    transaction, serialised with the Store SCP's writes (it locks a round to join it).
    """
    recorded = [d for d in routing.decisions if isinstance(d, Take | GiveUp)]
    touched = {o.round_id for o in routing.outcomes} | {i for d in recorded for i in d.round_ids}
    whole = any(fingerprints[d.fingerprint].study_level for d in recorded)
    checked = [r for r in seen if whole or r.id in touched]
    with Session(engine) as session, session.begin():
        rounds = {r.id: session.get(Series, r.id, with_for_update=True) for r in checked}
        if not all(_unchanged(rounds[r.id], r) for r in checked):
            return []
        if whole and _open_ids(session, study) != {r.id for r in seen}:
            return []
        jobs = [
            _make_job(session, take, fingerprints[take.fingerprint], now)
            for take in routing.decisions
            if isinstance(take, Take)
        ]
        for given_up in routing.decisions:
            if isinstance(given_up, GiveUp):
                session.add_all(
                    SeriesDecision(series_id=round_id, fingerprint_name=given_up.fingerprint,
                                   reason=given_up.reason, at=now)
                    for round_id in given_up.round_ids
                )  # fmt: skip
        for outcome in routing.outcomes:
            _set_state(rounds[outcome.round_id], outcome)
        return jobs


def _open_ids(session: Session, study: Study) -> set[int]:
    return set(session.scalars(select(Series.id).where(*_open_in(study))))


def _unchanged(row: Series | None, seen: OpenRound) -> bool:
    return (
        row is not None
        and row.state in OPEN
        and row.instance_count == seen.instance_count
        and row.last_received_at == seen.last_received_at
    )


def _make_job(session: Session, take: Take, snapshot: Fingerprint, now: datetime) -> int:
    job = new_job(take.round_ids[0], take.fingerprint, snapshot, now)
    session.add(job)
    session.flush()
    for member in take.members:
        session.get_one(Series, member.round_id).taken_at = now  # no more instances join it
        last = session.scalar(
            select(func.max(Instance.id)).where(Instance.series_id == member.round_id)
        )
        session.add(
            SeriesDecision(
                series_id=member.round_id, fingerprint_name=take.fingerprint, job_id=job.id,
                trigger=member.trigger, last_instance_id=last, at=now,
            )
        )  # fmt: skip
    held = ", ".join(
        f"{m.trigger} = series {m.round_id}" if m.trigger else f"series {m.round_id}"
        for m in take.members
    )
    change_state(session, job, JobState.PENDING, f"created for {held} ({take.fingerprint})", now)
    logger.info(
        "%s matched %s: job %d for model %s", held, take.fingerprint, job.id,
        snapshot.model_human_readable_id,
    )  # fmt: skip
    return job.id


def _set_state(row: Series | None, outcome: Outcome) -> None:
    state, reason = outcome.state, outcome.reason
    if row is None:
        return
    row.wait_until = outcome.until
    if (row.state, row.state_reason) == (state, reason):
        return
    row.state, row.state_reason = state, reason
    level = logging.WARNING if state == SeriesState.INCOMPLETE else logging.INFO
    if state == SeriesState.MATCHED:  # the reason says "matched ..." itself
        logger.log(level, "series %d %s", row.id, reason)
    else:
        logger.log(level, "series %d %s: %s", row.id, state, reason)
