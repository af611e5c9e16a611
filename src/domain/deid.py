"""What a fingerprint (or a server) asks of de-identification: the options of DICOM PS3.15
Annex E's Basic Application Level Confidentiality Profile that a model may need.

    "deidentify": true                        the profile with its defaults
    "deidentify": {"retain_dates": true, "retain_patient_characteristics": true,
                   "series_descriptions": ["T1 MPRAGE"], "stable_patient": true}
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

PRIVATE_KEY = re.compile(
    r"^(?P<creator>[^:]{1,64}):(?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{2})$"
)
Description = Annotated[str, Field(min_length=1, max_length=64)]


class Deidentify(BaseModel):
    """The profile's options, each off unless asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Retain Longitudinal Temporal Information with Modified Dates: every date moves by one
    # constant number of days (per patient with stable_patient, else per job); times stay.
    retain_dates: bool = False
    # Retain Patient Characteristics: sex, age, size, weight (dose and segmentation need them).
    retain_patient_characteristics: bool = False
    # Retain Device Identity: serial numbers, station and device names (not their UIDs).
    retain_device_identity: bool = False
    # Clean Descriptors: the series description is kept only when it is one of these
    # (compared without case); every other description goes.
    series_descriptions: list[Description] = Field(default_factory=list, max_length=1000)
    # Retain Safe Private: only these private elements, as "CREATOR:gggg,ee" (the private
    # creator, the group, and the element's last two hex digits).
    private_tags: list[str] = Field(default_factory=list, max_length=1000)
    # One pseudonym (and one date shift) per patient across studies, for models that
    # compare a follow-up with its baseline; else each job gets its own.
    stable_patient: bool = False
    # Instances that may carry identity in their pixels (BurnedInAnnotation YES, secondary
    # captures, ultrasound, documents) are left out unless this is true.
    allow_burned_in: bool = False

    @field_validator("private_tags")
    @classmethod
    def _private_keys(cls, keys: list[str]) -> list[str]:
        bad = [key for key in keys if not PRIVATE_KEY.match(key)]
        if bad:
            raise ValueError(
                f'not a private element ("CREATOR:gggg,ee", e.g. "SIEMENS CSA HEADER:0029,10"): '
                f"{', '.join(map(repr, bad[:3]))}"
            )
        return keys

    def private_allowed(self) -> set[tuple[str, int, int]]:
        """The private elements kept: (creator, group, element's last byte)."""
        found = set()
        for key in self.private_tags:
            match = PRIVATE_KEY.match(key)
            assert match is not None  # checked on load
            group, element = int(match["group"], 16), int(match["element"], 16)
            found.add((match["creator"].strip(), group, element))
        return found

    def keeps_description(self, description: str) -> bool:
        """Whether a series description is in the allow-list."""
        wanted = description.strip().casefold()
        return any(wanted == allowed.strip().casefold() for allowed in self.series_descriptions)


def options_of(value: bool | Deidentify) -> Deidentify | None:
    """The options a fingerprint's `deidentify` stands for (None: no de-identification)."""
    if isinstance(value, Deidentify):
        return value
    return Deidentify() if value else None
