"""A de-identified job's pseudonyms in the database: written before its archive goes,
read when its output comes back, deleted with its files."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from isdr.db.models import DeidMap, PatientPseudonym
from isdr.errors import IsdrError


def load(engine: Engine, job_id: int) -> dict[str, Any] | None:
    """The job's pseudonyms (None: it was not de-identified, or they are gone)."""
    with Session(engine) as session:
        return session.scalars(select(DeidMap.data).where(DeidMap.job_id == job_id)).first()


def save(engine: Engine, job_id: int, data: dict[str, Any], now: datetime) -> None:
    """Keep the job's pseudonyms (replacing an earlier attempt's)."""
    with Session(engine) as session, session.begin():
        row = session.scalars(select(DeidMap).where(DeidMap.job_id == job_id)).first()
        if row is None:
            session.add(DeidMap(job_id=job_id, data=data, created_at=now))
        else:
            row.data = data


def forget(engine: Engine, job_id: int) -> None:
    """Delete the job's pseudonyms (with its files)."""
    with Session(engine) as session, session.begin():
        session.execute(delete(DeidMap).where(DeidMap.job_id == job_id))


def patient(engine: Engine, original: str, pseudonym: str, shift_days: int) -> tuple[str, int]:
    """The pseudonym and date shift kept for a patient across studies (`original`: the
    issuer and the PatientID): the given ones the first time, the kept ones after; a kept
    shift of 0 (none was needed then) takes the given one."""
    for _attempt in range(2):  # two jobs of one patient at once: the second reads the first's
        try:
            with Session(engine) as session, session.begin():
                row = session.scalars(
                    select(PatientPseudonym).where(PatientPseudonym.patient_id == original)
                ).first()
                if row is None:
                    row = PatientPseudonym(
                        patient_id=original, pseudonym=pseudonym, shift_days=shift_days
                    )
                    session.add(row)
                elif not row.shift_days and shift_days:
                    row.shift_days = shift_days
                return row.pseudonym, row.shift_days
        except IntegrityError:
            continue
    raise IsdrError("could not keep the patient's pseudonym (the database refused it twice)")
