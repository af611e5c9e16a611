"""Recording received instances into series rounds, and reading them back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from isdr.db.models import Instance, Series, SeriesState

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


def record_instance(engine: Engine, new: NewInstance) -> Recorded:
    """Add an instance to the open round of its series (opening one if needed).

    A SOP instance already in that round is a duplicate: nothing is added.
    """
    for attempt in range(3):
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return _record(session, new)
        except IntegrityError:
            # Another association opened the same round at the same moment: read it again.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _record(session: Session, new: NewInstance) -> Recorded:
    series, is_new = _open_round(session, new)
    exists = session.scalar(
        select(Instance.id).where(
            Instance.series_id == series.id, Instance.sop_instance_uid == new.sop_instance_uid
        )
    )
    if exists is not None:
        return Recorded(series.id, series_is_new=False, duplicate=True)
    session.add(
        Instance(
            series_id=series.id,
            sop_instance_uid=new.sop_instance_uid,
            sop_class_uid=new.sop_class_uid,
            path=new.path,
            size=new.size,
            received_at=new.received_at,
        )
    )
    series.instance_count += 1
    series.total_bytes += new.size
    series.last_received_at = max(series.last_received_at, new.received_at)
    if new.sop_class_uid and new.sop_class_uid not in series.sop_class_uids:
        series.sop_class_uids = [*series.sop_class_uids, new.sop_class_uid]
    return Recorded(series.id, series_is_new=is_new, duplicate=False)


def _open_round(session: Session, new: NewInstance) -> tuple[Series, bool]:
    series = session.scalars(
        select(Series)
        .where(
            Series.series_instance_uid == new.series_instance_uid,
            Series.state == SeriesState.RECEIVING,
        )
        .order_by(Series.round.desc())
        .limit(1)
    ).first()
    if series is not None:
        return series, False
    last_round = session.scalar(
        select(func.max(Series.round)).where(Series.series_instance_uid == new.series_instance_uid)
    )
    series = Series(
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
    session.add(series)
    session.flush()
    return series, True


def is_recorded(engine: Engine, path: str) -> bool:
    """Whether an instance file at `path` (relative to INCOMING_DIR) is recorded."""
    with Session(engine) as session:
        return session.scalar(select(Instance.id).where(Instance.path == path).limit(1)) is not None


def list_series(engine: Engine, limit: int = 200) -> list[Series]:
    """The most recently active series rounds, newest first."""
    with Session(engine, expire_on_commit=False) as session:
        rows = session.scalars(
            select(Series).order_by(Series.last_received_at.desc()).limit(limit)
        ).all()
        session.expunge_all()
        return list(rows)
