"""What leaves the database: frozen copies of rows, never the ORM rows themselves."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from isdr.db.models import InvalidSnapshot
from isdr.domain.fingerprint import Fingerprint

View = TypeVar("View")


def view_of(cls: type[View], row: Any) -> View:
    """A frozen copy of `row` (an ORM row) as `cls`, a dataclass whose fields are columns."""
    return cls(**{field.name: getattr(row, field.name) for field in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class SeriesView:
    """One series round, as `isdr series` and the tests see it."""

    id: int
    series_instance_uid: str
    round: int
    study_instance_uid: str
    patient_id: str
    study_description: str
    series_description: str
    modality: str
    sop_class_uids: list[str]
    folder: str
    instance_count: int
    total_bytes: int
    first_received_at: datetime
    last_received_at: datetime
    calling_ae_title: str
    peer_address: str
    state: str
    state_reason: str
    files_removed_at: datetime | None
    released_at: datetime | None


@dataclass(frozen=True)
class InstanceView:
    """One stored instance: where it is under INCOMING_DIR and what it is."""

    sop_instance_uid: str
    sop_class_uid: str
    path: str  # relative to INCOMING_DIR
    size: int


@dataclass(frozen=True)
class JobView:
    """One job, as `isdr jobs` and the demo see it."""

    id: int
    series_id: int
    fingerprint_name: str
    fingerprint: Fingerprint | None  # None: its copy no longer validates (see last_error)
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    task_uid: str
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    failed_step: str | None
    output_dir: str | None
    outputs_note: str | None
    files_removed_at: datetime | None
    archive_sent_at: datetime | None
    remote_delete_due_at: datetime | None
    remote_delete_attempts: int | None
    ambiguous_submits: int | None
    poll_errors: int | None
    series_ids: tuple[int, ...]  # every series round it holds (series_id is the first)
    server_name: str | None = None  # the pool member it was last sent to
    waiting_for: str | None = None  # why it waits (state waiting)

    @property
    def model(self) -> str:
        """The model the job was sent to, as its fingerprint names it."""
        return "?" if self.fingerprint is None else self.fingerprint.model_human_readable_id

    @property
    def server(self) -> str:
        """The InferenceServer: the pool member's name, or the URL the job's fingerprint
        names (a pool's job not yet sent: its pool)."""
        if self.server_name:
            return self.server_name
        return "?" if self.fingerprint is None else self.fingerprint.server_label


def job_view(row: Any) -> JobView:
    """A job row as a view; one whose copy of its fingerprint no longer validates is
    still listed (with no fingerprint): one bad row must not hide the others."""
    try:
        return view_of(JobView, row)
    except InvalidSnapshot:
        names = [field.name for field in fields(JobView) if field.name != "fingerprint"]
        return JobView(fingerprint=None, **{name: getattr(row, name) for name in names})


@dataclass(frozen=True)
class EventView:
    """One line of a job's timeline."""

    at: datetime
    state: str
    message: str
