"""Recording received instances into series rounds, and reading them back."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from isdr.db.engine import unavailable_reason
from isdr.db.models import Instance, Series, UTCDateTime
from isdr.db.views import SeriesView, view_of
from isdr.domain.held import held_reason
from isdr.domain.states import SeriesState
from isdr.errors import DatabaseUnavailable

SERIES = cast(Table, Series.__table__)
INSTANCE = cast(Table, Instance.__table__)

SEVERAL = "*"  # the association_uid of a round that several associations sent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewInstance:
    """What the receiving side knows of an instance it has just put on disk."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    study_description: str
    series_description: str
    folder: str
    path: str
    size: int
    calling_ae_title: str
    peer_address: str
    received_at: datetime
    association_uid: str = ""  # "": not received over an association of ours (the inbox)
    image_position: str = ""
    image_orientation: str = ""
    images_in_acquisition: int | None = None
    temporal_positions: int | None = None


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording one instance."""

    series_id: int
    series_is_new: bool
    duplicate: bool
    replaced_path: str = ""  # a duplicate stored at another path: that older file
    held: str = ""  # the round went `held` with this instance: why
    agrees_again: bool = False  # the round was held, and this resend made it agree again


@dataclass(frozen=True)
class _Round:
    """The open round an instance joins: what its agreement check needs."""

    id: int
    sop_classes: list[str]
    is_new: bool
    patient_id: str
    study_instance_uid: str
    state: str
    released: bool


def record_instance(engine: Engine, new: NewInstance) -> Recorded:
    """Add an instance to the open round of its series (opening one if needed).

    A SOP instance already in that round is a duplicate: nothing is added. Plain SQL
    statements rather than the ORM: this runs once per received instance. A database
    that is locked, full or unreachable raises DatabaseUnavailable; nothing is recorded.
    """
    for attempt in range(3):
        try:
            with engine.begin() as connection:
                return _record(connection, new)
        except IntegrityError:
            # Another association opened the same round at the same moment: read it again.
            if attempt == 2:
                raise
        except OperationalError as exc:
            reason = unavailable_reason(str(exc.orig))
            if reason is None:
                raise
            raise DatabaseUnavailable(reason) from exc
    raise AssertionError("unreachable")


def _record(connection: Connection, new: NewInstance) -> Recorded:
    opened = _open_round(connection, new)
    series_id, sop_classes = opened.id, opened.sop_classes
    duplicate = connection.execute(
        _FIND_INSTANCE, {"series_id": series_id, "sop": new.sop_instance_uid}
    ).first()
    if duplicate is not None:
        # The latest copy wins: it may be a resend with a corrected tag, stored elsewhere.
        connection.execute(
            _REPLACE_INSTANCE,
            {
                "instance": duplicate.id,
                "path": new.path,
                "size": new.size,
                "patient": new.patient_id,
                "study": new.study_instance_uid,
            },
        )
        replaced = duplicate.path if duplicate.path != new.path else ""
        held, agrees = _check_agreement(connection, opened, new, duplicate=True)
        return Recorded(series_id, False, True, replaced, held, agrees)
    connection.execute(
        _INSERT_INSTANCE,
        {
            "series_id": series_id,
            "sop_instance_uid": new.sop_instance_uid,
            "sop_class_uid": new.sop_class_uid,
            "path": new.path,
            "size": new.size,
            "received_at": new.received_at,
            "patient_id": new.patient_id,
            "study_instance_uid": new.study_instance_uid,
            "image_position": new.image_position or None,
            "image_orientation": new.image_orientation or None,
            "images_in_acquisition": new.images_in_acquisition,
            "temporal_positions": new.temporal_positions,
        },
    )
    connection.execute(
        _COUNT_INSTANCE,
        {
            "series": series_id,
            "size": new.size,
            "at": new.received_at,
            "association": new.association_uid,
        },
    )
    if new.sop_class_uid and new.sop_class_uid not in sop_classes:
        connection.execute(
            _SET_SOP_CLASSES, {"series": series_id, "classes": [*sop_classes, new.sop_class_uid]}
        )
    held, agrees = _check_agreement(connection, opened, new, duplicate=False)
    return Recorded(series_id, opened.is_new, False, "", held, agrees)


def _check_agreement(
    connection: Connection, opened: _Round, new: NewInstance, *, duplicate: bool
) -> tuple[str, bool]:
    """Hold the round when its instances come to disagree on the patient or study, and
    let it go on when a resend made them agree again. Returns (why it went held, whether
    it agrees again).

    Costs a query only when the instance differs from the round's label, or replaces one
    in a held round: a round whose instances agree is never counted.
    """
    same = (opened.patient_id, opened.study_instance_uid) == (
        new.patient_id,
        new.study_instance_uid,
    )
    held = opened.state == SeriesState.HELD
    if opened.released or (same and not (held and duplicate)):
        return "", False
    counts = connection.execute(_AGREEMENT, {"series": opened.id}).one()
    reason = held_reason(counts.patients, counts.studies)
    if reason is not None:
        connection.execute(_HOLD, {"series": opened.id, "reason": reason})
        return ("" if held else reason), False
    label = {"series": opened.id, "patient": counts.patient, "study": counts.study}
    connection.execute(_AGREE, label)
    return "", held


def _other_sender(row: Any, new: NewInstance) -> bool:
    """Whether an instance comes from another sender than the round's first: another
    calling AE title, or another address (the port of each association differs). Files
    placed in INCOMING_DIR (peers "inbox", "storescp") have no sender: two such never
    make several (the same file may reach the database by two of those ways)."""
    old, new_peer = row.peer_address or "", new.peer_address or ""
    if not _is_address(old) and not _is_address(new_peer):
        return False
    if (row.calling_ae_title or "") != new.calling_ae_title:
        return True
    return _host(old) != _host(new_peer)


def _is_address(peer: str) -> bool:
    host = _host(peer).strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host(peer: str) -> str:
    return peer.rsplit(":", 1)[0] if ":" in peer else peer


def _open_round(connection: Connection, new: NewInstance) -> _Round:
    row = connection.execute(_FIND_OPEN_ROUND, {"uid": new.series_instance_uid}).first()
    if row is not None:
        if row.peer_address != SEVERAL and _other_sender(row, new):
            connection.execute(_SEVERAL_SENDERS, {"series": int(row.id)})
        return _Round(
            int(row.id), list(row.sop_class_uids or []), False, row.patient_id,
            row.study_instance_uid, row.state, row.released_at is not None,
        )  # fmt: skip
    last_round = connection.scalar(_LAST_ROUND, {"uid": new.series_instance_uid})
    inserted = connection.execute(
        insert(SERIES).values(
            series_instance_uid=new.series_instance_uid,
            round=(last_round or 0) + 1,
            study_instance_uid=new.study_instance_uid,
            patient_id=new.patient_id,
            study_description=new.study_description,
            series_description=new.series_description,
            modality=new.modality,
            sop_class_uids=[],
            folder=new.folder,
            instance_count=0,
            total_bytes=0,
            first_received_at=new.received_at,
            last_received_at=new.received_at,
            calling_ae_title=new.calling_ae_title,
            peer_address=new.peer_address,
            state=SeriesState.RECEIVING,
            state_reason="",
        )
    ).inserted_primary_key
    assert inserted is not None
    return _Round(
        int(inserted[0]), [], True, new.patient_id, new.study_instance_uid,
        SeriesState.RECEIVING, False,
    )  # fmt: skip


# Built once: these run for every received instance, and building a statement costs more
# than executing it.
# A held round stays open: the rest of its series joins it while a person decides; so does
# a waiting one, while a fingerprint waits for the rest of its study or its missing slices
# (unless a job already holds it).
_OPEN_STATES = (SeriesState.RECEIVING, SeriesState.WAITING, SeriesState.HELD)
_FIND_OPEN_ROUND = (
    select(
        SERIES.c.id, SERIES.c.sop_class_uids, SERIES.c.patient_id, SERIES.c.study_instance_uid,
        SERIES.c.state, SERIES.c.released_at, SERIES.c.calling_ae_title, SERIES.c.peer_address,
    )
    .where(
        SERIES.c.series_instance_uid == bindparam("uid"),
        SERIES.c.state.in_(_OPEN_STATES),
        SERIES.c.taken_at.is_(None),
    )
    .order_by(SERIES.c.round.desc())
    .limit(1)
    # Routing decides about a round under the same lock: an instance either joins the
    # round before it is decided, or opens the next one (SQLite serialises writers anyway).
    .with_for_update()
)  # fmt: skip
_LAST_ROUND = select(func.max(SERIES.c.round)).where(
    SERIES.c.series_instance_uid == bindparam("uid")
)
_FIND_INSTANCE = select(INSTANCE.c.id, INSTANCE.c.path).where(
    INSTANCE.c.series_id == bindparam("series_id"),
    INSTANCE.c.sop_instance_uid == bindparam("sop"),
)
_INSERT_INSTANCE = insert(INSTANCE)
_REPLACE_INSTANCE = (
    update(INSTANCE)
    .where(INSTANCE.c.id == bindparam("instance"))
    .values(
        path=bindparam("path"),
        size=bindparam("size"),
        patient_id=bindparam("patient"),
        study_instance_uid=bindparam("study"),
    )
)
# An instance recorded before instances kept their own PatientID and study is the round's.
_PATIENT = func.coalesce(INSTANCE.c.patient_id, SERIES.c.patient_id)
_STUDY = func.coalesce(INSTANCE.c.study_instance_uid, SERIES.c.study_instance_uid)
_AGREEMENT = (
    select(
        func.count(_PATIENT.distinct()).label("patients"),
        func.count(_STUDY.distinct()).label("studies"),
        func.min(_PATIENT).label("patient"),
        func.min(_STUDY).label("study"),
    )
    .select_from(INSTANCE.join(SERIES, SERIES.c.id == INSTANCE.c.series_id))
    .where(INSTANCE.c.series_id == bindparam("series"))
)
_HOLD = (
    update(SERIES)
    .where(SERIES.c.id == bindparam("series"))
    .values(state=SeriesState.HELD, state_reason=bindparam("reason"))
)
_AGREE = (
    update(SERIES)
    .where(SERIES.c.id == bindparam("series"))
    .values(
        state=SeriesState.RECEIVING,
        state_reason="",
        patient_id=bindparam("patient"),
        study_instance_uid=bindparam("study"),
    )
)
_COUNT_INSTANCE = (
    update(SERIES)
    .where(SERIES.c.id == bindparam("series"))
    .values(
        instance_count=SERIES.c.instance_count + 1,
        total_bytes=SERIES.c.total_bytes + bindparam("size"),
        last_received_at=bindparam("at", type_=UTCDateTime()),
        # The association that sent the round, "*" once a second one adds to it; and an
        # instance since the association's release means the sender goes on.
        association_uid=case(
            (SERIES.c.instance_count == 0, bindparam("association")),
            (SERIES.c.association_uid == bindparam("association"), bindparam("association")),
            else_=SEVERAL,
        ),
        association_ended_at=None,
        # A waiting round that gains an instance is receiving again: decided once settled.
        state=case(
            (SERIES.c.state == SeriesState.WAITING, SeriesState.RECEIVING), else_=SERIES.c.state
        ),
        state_reason=case((SERIES.c.state == SeriesState.WAITING, ""), else_=SERIES.c.state_reason),
        wait_until=None,
    )
)
# A round that another AE title, or another address, adds to has no one sender to send
# predictions back to: its peer_address says so.
_SEVERAL_SENDERS = (
    update(SERIES).where(SERIES.c.id == bindparam("series")).values(peer_address=SEVERAL)
)
_SET_SOP_CLASSES = (
    update(SERIES)
    .where(SERIES.c.id == bindparam("series"))
    .values(sop_class_uids=bindparam("classes", type_=SERIES.c.sop_class_uids.type))
)


def association_released(engine: Engine, association_uid: str, now: datetime) -> int:
    """Record that an association was released: the open rounds it alone sent may be
    complete now. How many rounds it sent."""
    with engine.begin() as connection:
        done = connection.execute(
            update(SERIES)
            .where(
                SERIES.c.association_uid == association_uid,
                SERIES.c.state.in_((SeriesState.RECEIVING, SeriesState.WAITING)),
            )
            .values(association_ended_at=now)
        )
        return int(done.rowcount or 0)


def is_recorded(engine: Engine, path: str) -> bool:
    """Whether an instance file at `path` (relative to INCOMING_DIR) is recorded."""
    with Session(engine) as session:
        return session.scalar(select(Instance.id).where(Instance.path == path).limit(1)) is not None


def list_series(
    engine: Engine,
    limit: int = 200,
    offset: int = 0,
    state: str | None = None,
    *,
    modality: str | None = None,
    calling_ae_title: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[SeriesView]:
    """The most recently active series rounds, newest first; only those in `state`, of
    `modality`, from `calling_ae_title`, last received from `since` and before `until`,
    when given."""
    query = select(Series).order_by(Series.last_received_at.desc(), Series.id.desc())
    conditions = [
        Series.state == state if state is not None else None,
        Series.modality == modality if modality is not None else None,
        Series.calling_ae_title == calling_ae_title if calling_ae_title is not None else None,
        Series.last_received_at >= since if since is not None else None,
        Series.last_received_at < until if until is not None else None,
    ]
    query = query.where(*[condition for condition in conditions if condition is not None])
    with Session(engine) as session:
        rows = session.scalars(query.limit(limit).offset(offset))
        return [view_of(SeriesView, row) for row in rows]


def recorded_paths(engine: Engine) -> set[str]:
    """The path (relative to INCOMING_DIR) of every recorded instance."""
    with Session(engine) as session:
        return set(session.scalars(select(Instance.path)))


def release_held(engine: Engine, series_id: int, now: datetime) -> SeriesView | None:
    """`isdr series release`: a held round goes on as one series (routed once quiet, and
    never held again); None unless it was held."""
    return _decide(engine, series_id, SeriesState.RECEIVING, "released by a person", now)


def discard_held(engine: Engine, series_id: int, now: datetime) -> SeriesView | None:
    """`isdr series delete`: a held round is never submitted; the post daemon removes its
    files. None unless it was held."""
    return _decide(engine, series_id, SeriesState.DISCARDED, "deleted by a person", now)


def _decide(
    engine: Engine, series_id: int, state: SeriesState, who: str, now: datetime
) -> SeriesView | None:
    with Session(engine) as session, session.begin():
        series = session.get(Series, series_id, with_for_update=True)
        if series is None or series.state != SeriesState.HELD:
            return None
        held_for = series.state_reason.removeprefix("held: ")
        series.state, series.state_reason = state, f"{who} at {now:%Y-%m-%d %H:%M} ({held_for})"
        if state == SeriesState.RECEIVING:
            series.released_at = now
        logger.info("series %d: %s", series.id, series.state_reason)
        return view_of(SeriesView, series)


def get_series(engine: Engine, series_id: int) -> SeriesView | None:
    """One series round, or None."""
    with Session(engine) as session:
        row = session.get(Series, series_id)
        return None if row is None else view_of(SeriesView, row)


def instance_paths(engine: Engine, series_id: int) -> list[str]:
    """The round's instance files, relative to INCOMING_DIR, in the order received."""
    with Session(engine) as session:
        query = select(Instance.path).where(Instance.series_id == series_id)
        return list(session.scalars(query.order_by(Instance.id)))
