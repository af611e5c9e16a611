"""The fingerprint file format: the original relay's keys, plus a few documented additions.

A fingerprint says which series (by Modality, SeriesDescription, StudyDescription and
SOPClassUID, with an exclusion) go to which model on which InferenceServer, and to which
DICOM destinations the predictions go.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from isdr.errors import IsdrError


class TokenUnavailable(IsdrError):
    """The token's variable or file named by a fingerprint cannot be read."""


AE_TITLE_MAX = 16  # characters, PS3.5 6.2 (AE)

Regex = Annotated[str, Field(description="a regular expression, searched case-insensitively")]


class DestinationTls(BaseModel):
    """TLS to a destination that requires it; `{}` means TLS, verified by the system's CAs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = Field(None, min_length=1, description="CA bundle to verify it with")
    cert_file: str | None = Field(None, min_length=1, description="our client certificate")
    key_file: str | None = Field(None, min_length=1, description="the key of cert_file")
    check_hostname: bool = Field(True, description="the certificate must name scu_ip")

    @model_validator(mode="after")
    def _cert_with_key(self) -> DestinationTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if not self.check_hostname and self.ca_file is None:
            raise ValueError(
                "check_hostname false needs a ca_file: with the system's CAs, any site's "
                "certificate would be accepted"
            )
        return self


class Destination(BaseModel):
    """A DICOM node the predictions are sent to (C-STORE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scu_ip: str = Field(min_length=1, description="host name or address of the destination")
    scu_port: int = Field(ge=1, le=65535, description="its DICOM port")
    # Not refused when longer than 16: the original relay loaded such files. The loader
    # warns, and this destination alone fails at delivery (see ae_title_too_long).
    scu_ae_title: str = Field(min_length=1, description="its AE title (at most 16 characters)")
    tls: DestinationTls | None = Field(None, description="present: the destination speaks TLS")

    @property
    def ae_title_too_long(self) -> bool:
        """Whether scu_ae_title is longer than DICOM allows: it cannot be called."""
        return len(self.scu_ae_title.strip()) > AE_TITLE_MAX


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
    # Or, kept out of the fingerprint file and out of the database's job copies:
    inference_server_token_env: str | None = Field(None, min_length=1)  # a variable's name
    inference_server_token_file: str | None = Field(None, min_length=1)  # a file's path

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

    @model_validator(mode="after")
    def _one_token_source(self) -> Fingerprint:
        sources = [
            self.inference_server_token,
            self.inference_server_token_env,
            self.inference_server_token_file,
        ]
        if sum(source is not None for source in sources) > 1:
            raise ValueError(
                "give at most one of inference_server_token, inference_server_token_env "
                "and inference_server_token_file"
            )
        return self

    def token(self) -> str | None:
        """The token to send, read from the environment or its file when named so."""
        if self.inference_server_token is not None:
            return self.inference_server_token.get_secret_value()
        if self.inference_server_token_env is not None:
            value = os.environ.get(self.inference_server_token_env)
            if value is None:
                raise TokenUnavailable(
                    f"the variable {self.inference_server_token_env} "
                    "(inference_server_token_env) is not set"
                )
            return value.strip()
        if self.inference_server_token_file is not None:
            try:
                return Path(self.inference_server_token_file).read_text().strip()
            except OSError as exc:
                raise TokenUnavailable(
                    f"cannot read inference_server_token_file "
                    f"{self.inference_server_token_file}: {exc.strerror}"
                ) from exc
        return None

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data of this fingerprint, stored with each job created from it."""
        return self.model_dump(mode="json")


KNOWN_KEYS = tuple(Fingerprint.model_fields)
DESTINATION_KEYS = tuple(Destination.model_fields)
TLS_KEYS = tuple(DestinationTls.model_fields)
