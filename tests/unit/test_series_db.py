from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from isdr.db.engine import make_engine, unavailable_reason
from isdr.db.models import Series
from isdr.db.series import NewInstance, list_series, record_instance
from isdr.errors import DatabaseUnavailable

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NEW = NewInstance(
    patient_id="P",
    study_instance_uid="1.2",
    series_instance_uid="1.2.3",
    sop_instance_uid="1.2.3.1",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    modality="CT",
    study_description="S",
    series_description="D",
    folder="P/S/D/CT",
    path="P/S/D/CT/1.2.3.1.dcm",
    size=10,
    calling_ae_title="PACS",
    peer_address="10.0.0.1:1234",
    received_at=T0,
)


def test_instances_of_one_series_are_counted_in_one_round(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    first = record_instance(engine, NEW)
    second = record_instance(
        engine,
        dataclasses.replace(NEW, sop_instance_uid="1.2.3.2", received_at=T0 + timedelta(seconds=5)),
    )
    assert first.series_is_new and not second.series_is_new
    [series] = list_series(engine)
    assert (series.instance_count, series.total_bytes, series.round) == (2, 20, 1)
    assert series.last_received_at == T0 + timedelta(seconds=5)
    assert series.sop_class_uids == ["1.2.840.10008.5.1.4.1.1.2"]


def test_a_duplicate_instance_is_recorded_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    record_instance(engine, NEW)
    again = record_instance(engine, NEW)
    assert again.duplicate
    assert list_series(engine)[0].instance_count == 1


def test_an_instance_after_the_round_was_taken_opens_a_new_round(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    record_instance(engine, NEW)
    with Session(engine) as session, session.begin():
        session.execute(update(Series).values(state="unmatched"))
    late = record_instance(engine, NEW)
    assert late.series_is_new and not late.duplicate
    assert sorted(s.round for s in list_series(engine)) == [1, 2]


def test_a_database_from_an_earlier_version_gets_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    make_engine(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE series DROP COLUMN files_removed_at")
    engine = make_engine(f"sqlite:///{path}")
    record_instance(engine, NEW)
    assert list_series(engine)[0].files_removed_at is None


def test_a_full_database_is_told_as_such_and_records_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _no_room(dbapi_connection: object, _record: object) -> None:
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[attr-defined]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]

    # A description far beyond DICOM's 64 characters needs pages the database may not take.
    huge = dataclasses.replace(NEW, series_description="x" * 200_000)
    with pytest.raises(DatabaseUnavailable, match="the database or its disk is full"):
        record_instance(engine, huge)
    assert list_series(engine) == []


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("database is locked", "the database is locked by another writer"),
        ("canceling statement due to lock timeout", "the database is locked by another writer"),
        ("database or disk is full", "the database or its disk is full"),
        ('could not extend file "base/1/2": No space left on device', "the database or its disk"),
        ("server closed the connection unexpectedly", "the database cannot be reached"),
        ("no such table: instance", None),
        ("attempt to write a readonly database", None),
    ],
)
def test_only_a_database_locked_full_or_unreachable_is_a_passing_condition(
    message: str, reason: str | None
) -> None:
    found = unavailable_reason(message)
    assert found == reason if reason is None else (found or "").startswith(reason)
