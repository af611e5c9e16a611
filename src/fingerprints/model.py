"""The fingerprint file format: the original relay's keys, plus a few documented additions.

A fingerprint says which series (by Modality, SeriesDescription, StudyDescription and
SOPClassUID, with an exclusion) go to which model on which InferenceServer, and to which
DICOM destinations the predictions go.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
)

Regex = Annotated[str, Field(description="a regular expression, searched case-insensitively")]


class Destination(BaseModel):
    """A DICOM node the predictions are sent to (C-STORE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scu_ip: str = Field(min_length=1, description="host name or address of the destination")
    scu_port: int = Field(ge=1, le=65535, description="its DICOM port")
    scu_ae_title: str = Field(min_length=1, max_length=16, description="its AE title")


class Fingerprint(BaseModel):
    """One fingerprint file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality_regex: Regex = ""
    series_description_regex: Regex = ""
    study_description_regex: Regex = ""
    sop_class_uid_regex: Regex = ""
    calling_ae_title_regex: Regex = ""  # the sender's AE title: one node, several departments
    exclude_regex: Regex = "a^"
    inference_server_url: AnyHttpUrl
    model_human_readable_id: str = Field(min_length=1)
    scus: list[Destination] = Field(default_factory=list)
    inference_server_api: Literal[1, 2] = 1
    description: str = ""
    delete_remotely: bool | None = None
    inference_server_token: SecretStr | None = None

    @field_validator(
        "modality_regex",
        "series_description_regex",
        "study_description_regex",
        "sop_class_uid_regex",
        "calling_ae_title_regex",
        "exclude_regex",
    )
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @field_serializer("inference_server_token", when_used="json")
    def _reveal_token(self, token: SecretStr | None) -> str | None:
        # The job's snapshot must keep the token to use it; logs never print snapshots.
        return token.get_secret_value() if token is not None else None

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data of this fingerprint, stored with each job created from it."""
        return self.model_dump(mode="json")


KNOWN_KEYS = tuple(Fingerprint.model_fields)
DESTINATION_KEYS = tuple(Destination.model_fields)
