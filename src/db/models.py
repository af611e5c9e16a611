"""The tables: one row per series round and one per stored instance."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Base of all tables."""


class SeriesState(StrEnum):
    """Where a series round stands."""

    RECEIVING = "receiving"  # instances are arriving; not quiet for POST_AFTER yet
    MATCHED = "matched"  # quiet, and one job per matching fingerprint was created
    UNMATCHED = "unmatched"  # quiet, and no fingerprint matched


class Series(Base):
    """One round of a series: the instances received until it went quiet and was taken."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("series_instance_uid", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    round: Mapped[int] = mapped_column(Integer, default=1)
    study_instance_uid: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[str] = mapped_column(String(128))
    study_description: Mapped[str] = mapped_column(Text, default="")
    series_description: Mapped[str] = mapped_column(Text, default="")
    modality: Mapped[str] = mapped_column(String(32), default="")
    sop_class_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    folder: Mapped[str] = mapped_column(Text)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(64), default="")
    peer_address: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(32), default=SeriesState.RECEIVING, index=True)
    state_reason: Mapped[str] = mapped_column(Text, default="")
    files_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored instance of a series round."""

    __tablename__ = "instance"
    __table_args__ = (UniqueConstraint("series_id", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(128), default="")
    path: Mapped[str] = mapped_column(Text, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)

    series: Mapped[Series] = relationship(back_populates="instances")


class JobState(StrEnum):
    """Where a job stands: the post daemon moves it from PENDING to SUBMITTED or FAILED."""

    PENDING = "pending"  # waiting to be submitted (again) at next_attempt_at
    SUBMITTING = "submitting"  # a submit is on the wire
    SUBMITTED = "submitted"  # the InferenceServer has it under task_uid
    FAILED = "failed"  # given up; last_error says why


class Job(Base):
    """One series round sent to one model: the queue of the post daemon (and later ones)."""

    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    fingerprint_name: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(32), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    task_uid: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id")


class JobEvent(Base):
    """One line of a job's timeline: every state change and retry."""

    __tablename__ = "job_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")

    job: Mapped[Job] = relationship(back_populates="events")
