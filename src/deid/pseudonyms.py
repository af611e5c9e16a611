"""A job's pseudonyms: the patient's, the date shift, and every UID replaced, with the
originals needed to put the result back on the right patient and study.

Kept in the database with the job (never logged), and deleted with its data.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

# The patient's and the study's attributes put back on every object that comes back.
IDENTITY = (
    "SpecificCharacterSet",  # first: the names after it are written in it
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
)
SHIFT_RANGE = (30, 3650)  # days a date moves back: never 0, never a round year on purpose


def fresh_uid() -> str:
    """A new UID from a random UUID (`2.25.` + its integer, PS3.5 B.2): never derived
    from the original, so it cannot be reversed by guessing."""
    return f"2.25.{uuid.uuid4().int}"


def fresh_patient() -> str:
    """A new patient pseudonym (also the pseudonymised PatientName)."""
    return f"ISDR-{secrets.token_hex(6).upper()}"


def fresh_shift() -> int:
    """A random number of days dates move back by, per patient or per job."""
    low, high = SHIFT_RANGE
    return -(low + secrets.randbelow(high - low))


@dataclass
class Pseudonyms:
    """What one job replaced, and by what."""

    patient: str = field(default_factory=fresh_patient)
    shift_days: int = 0  # 0: dates were not kept (only with retain_dates are they moved)
    uids: dict[str, str] = field(default_factory=dict)  # original -> pseudonym
    identity: dict[str, Any] = field(default_factory=dict)  # keyword -> original value
    left_out: list[str] = field(default_factory=list)  # instances not sent, and why
    kinds: dict[str, str] = field(default_factory=dict)  # pseudonym -> study, series, ...
    dates: list[str] = field(default_factory=list)  # the first and last date sent, shifted

    def note_dates(self, value: Any) -> None:
        """Widen the range of the shifted dates sent by a DA or DT value (or several)."""
        values = value if isinstance(value, (list, tuple)) else [value]
        days = [str(v)[:8] for v in values if v and str(v)[:8].isdigit() and len(str(v)) >= 8]
        if days:
            self.dates = [min([*self.dates[:1], *days]), max([*self.dates[1:], *days])]

    def sent_date(self, value: str) -> bool:
        """Whether a date (YYYYMMDD...) falls in the range of the shifted dates sent: only
        those move back (the model's own dates, of today, stay)."""
        day = value[:8]
        return len(self.dates) == 2 and self.dates[0] <= day <= self.dates[1]

    def uid(self, original: str) -> str:
        """The pseudonym of a UID, made at its first use."""
        found = self.uids.get(original)
        if found is None:
            found = self.uids[original] = fresh_uid()
        return found

    def originals(self) -> dict[str, str]:
        """Pseudonym -> original, for the way back."""
        return {pseudonym: original for original, pseudonym in self.uids.items()}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (the database keeps it with the job)."""
        return {
            "patient": self.patient,
            "shift_days": self.shift_days,
            "uids": dict(self.uids),
            "identity": dict(self.identity),
            "left_out": list(self.left_out),
            "kinds": dict(self.kinds),
            "dates": list(self.dates),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pseudonyms:
        """Back from `to_json`."""
        return cls(
            patient=str(data["patient"]),
            shift_days=int(data.get("shift_days", 0)),
            uids={str(k): str(v) for k, v in dict(data.get("uids", {})).items()},
            identity=dict(data.get("identity", {})),
            left_out=[str(line) for line in data.get("left_out", [])],
            kinds={str(k): str(v) for k, v in dict(data.get("kinds", {})).items()},
            dates=[str(day) for day in data.get("dates", [])],
        )
