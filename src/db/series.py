"""Recording received instances into series rounds, and reading them back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from isdr.db.engine import unavailable_reason
from isdr.db.models import Instance, Series, UTCDateTime
from isdr.db.views import SeriesView, view_of
from isdr.domain.states import SeriesState
from isdr.errors import DatabaseUnavailable

SERIES = cast(Table, Series.__table__)
INSTANCE = cast(Table, Instance.__table__)

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


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording one instance."""

    series_id: int
    series_is_new: bool
    duplicate: bool
    replaced_path: str = ""  # a duplicate stored at another path: that older file


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
    series_id, sop_classes, is_new = _open_round(connection, new)
    duplicate = connection.execute(
        _FIND_INSTANCE, {"series_id": series_id, "sop": new.sop_instance_uid}
    ).first()
    if duplicate is not None:
        # The latest copy wins: it may be a resend with a corrected tag, stored elsewhere.
        connection.execute(
            _REPLACE_INSTANCE, {"instance": duplicate.id, "path": new.path, "size": new.size}
        )
        replaced = duplicate.path if duplicate.path != new.path else ""
        return Recorded(series_id, series_is_new=False, duplicate=True, replaced_path=replaced)
    connection.execute(
        _INSERT_INSTANCE,
        {
            "series_id": series_id,
            "sop_instance_uid": new.sop_instance_uid,
            "sop_class_uid": new.sop_class_uid,
            "path": new.path,
            "size": new.size,
            "received_at": new.received_at,
        },
    )
    connection.execute(
        _COUNT_INSTANCE, {"series": series_id, "size": new.size, "at": new.received_at}
    )
    if new.sop_class_uid and new.sop_class_uid not in sop_classes:
        connection.execute(
            _SET_SOP_CLASSES, {"series": series_id, "classes": [*sop_classes, new.sop_class_uid]}
        )
    return Recorded(series_id, series_is_new=is_new, duplicate=False)


def _open_round(connection: Connection, new: NewInstance) -> tuple[int, list[str], bool]:
    row = connection.execute(
        _FIND_OPEN_ROUND, {"uid": new.series_instance_uid, "state": SeriesState.RECEIVING}
    ).first()
    if row is not None:
        return int(row.id), list(row.sop_class_uids or []), False
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
    return int(inserted[0]), [], True


# Built once: these run for every received instance, and building a statement costs more
# than executing it.
_FIND_OPEN_ROUND = (
    select(SERIES.c.id, SERIES.c.sop_class_uids)
    .where(SERIES.c.series_instance_uid == bindparam("uid"), SERIES.c.state == bindparam("state"))
    .order_by(SERIES.c.round.desc())
    .limit(1)
)
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
    .values(path=bindparam("path"), size=bindparam("size"))
)
_COUNT_INSTANCE = (
    update(SERIES)
    .where(SERIES.c.id == bindparam("series"))
    .values(
        instance_count=SERIES.c.instance_count + 1,
        total_bytes=SERIES.c.total_bytes + bindparam("size"),
        last_received_at=bindparam("at", type_=UTCDateTime()),
    )
)
_SET_SOP_CLASSES = (
    update(SERIES)
    .where(SERIES.c.id == bindparam("series"))
    .values(sop_class_uids=bindparam("classes", type_=SERIES.c.sop_class_uids.type))
)


def is_recorded(engine: Engine, path: str) -> bool:
    """Whether an instance file at `path` (relative to INCOMING_DIR) is recorded."""
    with Session(engine) as session:
        return session.scalar(select(Instance.id).where(Instance.path == path).limit(1)) is not None


def list_series(engine: Engine, limit: int = 200) -> list[SeriesView]:
    """The most recently active series rounds, newest first."""
    with Session(engine) as session:
        rows = session.scalars(select(Series).order_by(Series.last_received_at.desc()).limit(limit))
        return [view_of(SeriesView, row) for row in rows]


def recorded_paths(engine: Engine) -> set[str]:
    """The path (relative to INCOMING_DIR) of every recorded instance."""
    with Session(engine) as session:
        return set(session.scalars(select(Instance.path)))
