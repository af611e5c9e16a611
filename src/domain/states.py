"""Where a series round, a job and a delivery stand: the states the database records.

The drawings are in docs/architecture.
"""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    """Where a series round stands."""

    RECEIVING = "receiving"  # instances are arriving; not quiet for POST_AFTER yet
    MATCHED = "matched"  # quiet, and one job per matching fingerprint was created
    UNMATCHED = "unmatched"  # quiet, and no fingerprint matched (or one gave up waiting)
    WAITING = "waiting"  # settled; a fingerprint waits for the rest of its study, or slices
    INCOMPLETE = "incomplete"  # a fingerprint gave up waiting for it to be complete
    HELD = "held"  # its instances disagree on the patient or study: a person decides
    DISCARDED = "discarded"  # a held round a person had deleted: its files go, nothing is sent


class JobState(StrEnum):
    """Where a job stands; see docs/architecture/jobs.md for the drawing."""

    PENDING = "pending"  # waiting to be submitted (again) at next_attempt_at
    WAITING = "waiting"  # its pool has no member that can take it now (waiting_for says why)
    SUBMITTING = "submitting"  # a submit is on the wire
    SUBMITTED = "submitted"  # the InferenceServer has it under task_uid: polled
    DELIVERING = "delivering"  # its output is unpacked; deliveries to destinations run
    DELIVERED = "delivered"  # every destination confirmed every DICOM file
    FAILED = "failed"  # given up at failed_step; last_error says why


class Step(StrEnum):
    """The step a failed job failed at, where `isdr jobs retry` restarts it."""

    SUBMIT = "submit"
    POLL = "poll"  # polling, downloading and unpacking the output
    DELIVER = "deliver"


class DeliveryState(StrEnum):
    """Where the delivery of one job's output to one destination stands."""

    PENDING = "pending"  # (re)try at next_attempt_at
    SENDING = "sending"  # an association is open
    DELIVERED = "delivered"  # every DICOM file confirmed
    FAILED = "failed"  # given up after the attempts; last_error says why
