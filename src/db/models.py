"""The tables: one row per series round and one per stored instance."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from isdr.domain.fingerprint import Fingerprint
from isdr.domain.servers import Server
from isdr.domain.states import SeriesState
from isdr.errors import IsdrError


class InvalidSnapshot(IsdrError):
    """A job's copy of its fingerprint no longer validates (a stricter later version)."""


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


class FingerprintJSON(TypeDecorator[Fingerprint]):
    """A job's own copy of its fingerprint: stored as JSON, read back as a validated model.

    New fingerprint keys must have defaults, so that older copies keep validating.
    """

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Fingerprint | None, dialect: Dialect) -> Any:
        return None if value is None else value.model_dump(mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> Fingerprint | None:
        if value is None:
            return None
        try:
            return Fingerprint.model_validate(value)
        except ValidationError as exc:
            raise InvalidSnapshot(f"the job's copy of its fingerprint is not valid: {exc}") from exc


class ServerJSON(TypeDecorator[Server]):
    """A job's own copy of the pool member it was sent to (SERVERS_FILE's entry then)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Server | None, dialect: Dialect) -> Any:
        return None if value is None else value.model_dump(mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> Server | None:
        if value is None:
            return None
        try:
            return Server.model_validate(value)
        except ValidationError as exc:
            raise InvalidSnapshot(f"the job's copy of its server is not valid: {exc}") from exc


class Base(DeclarativeBase):
    """Base of all tables."""


class Series(Base):
    """One round of a series: the instances received until it was complete and decided."""

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
    # A person released the round from `held`: it is submitted as it is, never held again.
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The association that sent its instances ("*" when several did; None: none, as for the
    # inbox), and when that association was released after the round's last instance.
    association_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    association_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A job holds it: it takes no more instances (they open the next round), though other
    # fingerprints may still decide about it.
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Waiting: looked at again once this time has come (or when its study changes).
    wait_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

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
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # the dashboard's
    # The instance's own; None in rows recorded before they were kept (read as the round's).
    patient_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Where it sits in a stack, as the data says (DICOM's own text; None: absent).
    image_position: Mapped[str | None] = mapped_column(String(200), nullable=True)
    image_orientation: Mapped[str | None] = mapped_column(String(200), nullable=True)
    images_in_acquisition: Mapped[int | None] = mapped_column(Integer, nullable=True)
    temporal_positions: Mapped[int | None] = mapped_column(Integer, nullable=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class ServerCheck(Base):
    """The last heartbeat of one InferenceServer (URL and generation): did it answer a
    poll of a made-up task as its generation does?"""

    __tablename__ = "server_check"
    __table_args__ = (UniqueConstraint("url", "api"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    api: Mapped[int] = mapped_column(Integer)
    up: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text, default="")
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    up_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SeriesDecision(Base):
    """What one fingerprint decided about one series round: a job holding it (under one
    of its triggers), or given up with the reason. A round is decided once per fingerprint."""

    __tablename__ = "series_decision"
    __table_args__ = (UniqueConstraint("series_id", "fingerprint_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    fingerprint_name: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), nullable=True, index=True)
    trigger: Mapped[str] = mapped_column(String(64), default="")
    # The job takes the round's instances up to this one (those that joined later do not).
    last_instance_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    """One series round sent to one model: the queue of the post daemon (and later ones)."""

    __tablename__ = "job"
    # A pool member's recent jobs, counted at each choice (isdr.db.pool.members).
    __table_args__ = (Index("ix_job_server_updated", "server_name", "updated_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    fingerprint_name: Mapped[str] = mapped_column(Text)
    # Deferred: read (and validated) only where it is used, not by every state change.
    fingerprint: Mapped[Fingerprint] = mapped_column(FingerprintJSON, deferred=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    task_uid: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Added with polling and delivery (nullable, so an older database gains them in place).
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failed_step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    output_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    outputs_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    files_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set just before the last bytes of a submit go out: a stop before it means the server
    # cannot have the archive (it is sent again); after it, the server may hold a task.
    archive_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A remote delete to do (or try again) at this time; None: none due.
    remote_delete_due_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, nullable=True, index=True
    )
    remote_delete_attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Submits whose whole archive went but whose answer was never recorded: each may have
    # left a task on the server that the relay does not know of.
    ambiguous_submits: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Bare 500s in a row from a generation-2 submit: an unknown model answers so.
    suspect_answers: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Unexpected errors while polling it, downloading, unpacking or judging its output: each
    # is an attempt; a few fail the job (counted across restarts, so never a loop).
    poll_errors: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A pool's job: the member it was last sent to (its name, and its entry then, which
    # polls and deletes keep using). None: the fingerprint names its server's URL.
    server_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    server_copy: Mapped[Server | None] = mapped_column(ServerJSON, nullable=True, deferred=True)
    # Why it waits (state `waiting`): every member of its pool is full, down or drained.
    waiting_for: Mapped[str | None] = mapped_column(Text, nullable=True)

    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id")
    # The rounds it holds (none recorded for a job made before jobs held several: series_id).
    members: Mapped[list[SeriesDecision]] = relationship(
        viewonly=True, order_by="SeriesDecision.series_id"
    )

    @property
    def series_ids(self) -> tuple[int, ...]:
        """Every series round the job holds."""
        return tuple(member.series_id for member in self.members) or (self.series_id,)


class JobEvent(Base):
    """One line of a job's timeline: every state change and retry."""

    __tablename__ = "job_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")

    job: Mapped[Job] = relationship(back_populates="events")


class OutputFile(Base):
    """One file of a job's unpacked output; DICOM files are delivered, others kept."""

    __tablename__ = "output_file"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    name: Mapped[str] = mapped_column(Text)  # relative to the job's output folder
    size: Mapped[int] = mapped_column(BigInteger)
    sop_class_uid: Mapped[str] = mapped_column(String(128), default="")  # "" if not DICOM
    sop_instance_uid: Mapped[str] = mapped_column(String(128), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(128), default="")


class Delivery(Base):
    """One destination of one job, tracked on its own."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("job_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # index in the fingerprint's scus
    host: Mapped[str] = mapped_column(Text)
    port: Mapped[int] = mapped_column(Integer)
    ae_title: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    tls: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the scu's `tls`
    # "The sender": the AE title and address that sent the job's series. Port 0 until the
    # deliverer has looked them up in SENDERS_FILE (again after a retry; host and ae_title
    # then keep where it was last, so a move elsewhere sends every file again).
    sender_ae: Mapped[str | None] = mapped_column(Text, nullable=True)
    sender_address: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def destination(self) -> str:
        """The destination as people write it: AE@host:port, or the sender not yet found."""
        if not self.port and self.sender_ae is not None:
            return f"the sender {self.sender_ae} (from {self.sender_address or 'files'})"
        return f"{self.ae_title}@{self.host}:{self.port}"


class DeliveredFile(Base):
    """A file a destination confirmed (C-STORE success or warning): never sent to it again."""

    __tablename__ = "delivered_file"
    __table_args__ = (UniqueConstraint("delivery_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("delivery.id"), index=True)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebSession(Base):
    """One person logged in to the console: the cookie's token is kept only as its SHA-256,
    the CSRF token every form and htmx request of the session must carry, and the end."""

    __tablename__ = "web_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(64))
    # Which password the session was opened with (a digest of its hash): a new password
    # or a removal in the users file ends the session.
    stamp: Mapped[str] = mapped_column(String(64), default="")
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class PoolServer(Base):
    """What the relays know of one named InferenceServer (SERVERS_FILE) beyond the file:
    drained by a person, down after failures in a row, its last probe and error rate."""

    __tablename__ = "pool_server"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    drained_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    down_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    probe_failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row
    submit_failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_probe: Mapped[str] = mapped_column(Text, default="")  # what it answered, in words
    # Requests and failures (probes and submits) since window_start (an hour at most).
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    window_requests: Mapped[int] = mapped_column(Integer, default=0)
    window_errors: Mapped[int] = mapped_column(Integer, default=0)


class StudyAffinity(Base):
    """Which pool member took a study's jobs for a model, until `expires_at`."""

    __tablename__ = "study_affinity"
    __table_args__ = (UniqueConstraint("study_instance_uid", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(Text)
    server_name: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class DeidMap(Base):
    """A de-identified job's pseudonyms (isdr.deid.pseudonyms): what it replaced and the
    originals to put back. Never logged; deleted with the job's files."""

    __tablename__ = "deid_map"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), unique=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PatientPseudonym(Base):
    """A patient's pseudonym and date shift kept across studies (a fingerprint's
    `stable_patient`)."""

    __tablename__ = "patient_pseudonym"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(128), unique=True)
    pseudonym: Mapped[str] = mapped_column(String(64))
    shift_days: Mapped[int] = mapped_column(Integer)
