from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from isdr.db.engine import make_engine, unavailable_reason
from isdr.db.jobs import series_ready_for_removal
from isdr.db.models import Series
from isdr.db.series import (
    NewInstance,
    association_released,
    discard_held,
    list_series,
    record_instance,
    release_held,
)
from isdr.domain.held import held_reason
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


def instance(number: int, patient: str = "P", study: str = "1.2") -> NewInstance:
    return dataclasses.replace(
        NEW, sop_instance_uid=f"1.2.3.{number}", patient_id=patient, study_instance_uid=study
    )


def test_instances_of_two_patients_hold_the_round_and_the_rest_of_the_series_joins_it(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert record_instance(engine, instance(1, "P")).held == ""
    second = record_instance(engine, instance(2, "Q"))
    assert second.held == "held: instances of two patients (2 PatientIDs) in one series"
    third = record_instance(engine, instance(3, "P"))
    assert third.series_id == second.series_id and third.held == "", "held once, one round"
    [series] = list_series(engine)
    assert (series.state, series.instance_count) == ("held", 3)
    assert "Q" not in series.state_reason and "P " not in series.state_reason


def test_instances_of_two_studies_hold_the_round(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    record_instance(engine, instance(1, study="1.2"))
    record_instance(engine, instance(2, study="1.9"))
    record_instance(engine, instance(3, patient="R", study="1.8"))
    [series] = list_series(engine)
    assert series.state == "held"
    assert series.state_reason == (
        "held: instances of two patients (2 PatientIDs) and three studies "
        "(3 StudyInstanceUIDs) in one series"
    )


def test_a_held_round_whose_instances_are_all_resent_corrected_goes_on(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    for number in (1, 2):
        record_instance(engine, instance(number, "WRONG"))
    assert record_instance(engine, instance(3, "RIGHT")).held
    assert not record_instance(engine, instance(1, "RIGHT")).agrees_again
    assert record_instance(engine, instance(2, "RIGHT")).agrees_again
    [series] = list_series(engine)
    assert (series.state, series.state_reason, series.patient_id) == ("receiving", "", "RIGHT")


def test_a_released_round_goes_on_and_is_not_held_again(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    record_instance(engine, instance(1, "P"))
    series_id = record_instance(engine, instance(2, "Q")).series_id
    released = release_held(engine, series_id, T0)
    assert released is not None and released.state == "receiving"
    assert released.state_reason.startswith("released by a person at 2026-01-01 00:00 (")
    assert record_instance(engine, instance(3, "R")).held == ""
    assert list_series(engine)[0].state == "receiving"
    assert release_held(engine, series_id, T0) is None, "only a held round is released"


def test_a_deleted_held_round_is_discarded_and_its_files_are_due_for_removal(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    record_instance(engine, instance(1, "P"))
    series_id = record_instance(engine, instance(2, "Q")).series_id
    assert series_ready_for_removal(engine, delete_on_post=False) == []
    discarded = discard_held(engine, series_id, T0)
    assert discarded is not None and discarded.state == "discarded"
    assert series_ready_for_removal(engine, delete_on_post=False) == [series_id]
    late = record_instance(engine, instance(3, "P"))
    assert late.series_is_new, "a later instance opens a new round"


@pytest.mark.parametrize(
    ("patients", "studies", "reason"),
    [
        (1, 1, None),
        (2, 1, "held: instances of two patients (2 PatientIDs) in one series"),
        (1, 12, "held: instances of 12 studies (12 StudyInstanceUIDs) in one series"),
    ],
)
def test_a_round_is_held_in_words_when_its_instances_disagree(
    patients: int, studies: int, reason: str | None
) -> None:
    assert held_reason(patients, studies) == reason


def test_a_round_names_the_association_that_sent_it_and_its_release(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    one = dataclasses.replace(NEW, association_uid="A")
    record_instance(engine, one)
    record_instance(engine, dataclasses.replace(one, sop_instance_uid="1.2.3.2"))
    assert association_released(engine, "B", T0) == 0
    assert association_released(engine, "A", T0 + timedelta(seconds=1)) == 1
    with Session(engine) as session:
        [series] = session.scalars(select(Series)).all()
        assert (series.association_uid, series.association_ended_at) == (
            "A", T0 + timedelta(seconds=1),
        )  # fmt: skip
    # Another association adds to it: its end no longer says the series is whole.
    record_instance(
        engine, dataclasses.replace(NEW, sop_instance_uid="1.2.3.3", association_uid="B")
    )
    with Session(engine) as session:
        [series] = session.scalars(select(Series)).all()
        assert (series.association_uid, series.association_ended_at) == ("*", None)
