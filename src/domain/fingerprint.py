"""The fingerprint file format: the original relay's keys, plus a few documented additions.

A fingerprint says which series (by Modality, SeriesDescription, StudyDescription and
SOPClassUID, with an exclusion) go to which model on which InferenceServer, and to which
DICOM destinations the predictions go.
"""

from __future__ import annotations

import os
import re
import unicodedata
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

from isdr.domain.destination import Destination, DestinationTls
from isdr.errors import IsdrError


class TokenUnavailable(IsdrError):
    """The token's variable or file named by a fingerprint cannot be read."""


Regex = Annotated[str, Field(description="a regular expression, searched case-insensitively")]


def has_control_character(text: str) -> bool:
    """Whether the text holds a control character (CR, LF, NUL, DEL, ...): never valid in
    an HTTP header, and a way to forge log lines."""
    return any(unicodedata.category(character) == "Cc" for character in text)


class Fingerprint(BaseModel):
    """One fingerprint file."""

    # Errors never quote the input: it may be a token.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

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
    # "optional": a model that writes no DICOM (a report only) succeeds without one.
    dicom_output: Literal["required", "optional"] = "required"
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

    @field_validator("inference_server_token")
    @classmethod
    def _printable_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and has_control_character(token.get_secret_value()):
            raise ValueError(
                "the token holds a control character (such as CR or LF): refused "
                "(the token is not shown)"
            )
        return token

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
        """The token to send, read from the environment or its file when named so;
        TokenUnavailable when it cannot be read or holds a control character."""
        if self.inference_server_token is not None:
            return self.inference_server_token.get_secret_value()
        if self.inference_server_token_env is not None:
            source = f"the variable {self.inference_server_token_env} (inference_server_token_env)"
            return _printable(self._token_from_env(source), source)
        if self.inference_server_token_file is not None:
            source = f"inference_server_token_file {self.inference_server_token_file}"
            return _printable(self._token_from_file(source), source)
        return None

    def _token_from_env(self, source: str) -> str:
        value = os.environ.get(str(self.inference_server_token_env))
        if value is None:
            raise TokenUnavailable(f"{source} is not set")
        return value.strip()

    def _token_from_file(self, source: str) -> str:
        try:
            return Path(str(self.inference_server_token_file)).read_text().strip()
        except OSError as exc:
            raise TokenUnavailable(f"cannot read {source}: {exc.strerror}") from exc

    def deletes_remotely(self, default: bool) -> bool:
        """Whether the remote task is deleted: `delete_remotely`, else the default
        (ASK_INFERENCE_SERVER_TO_DELETE_TASK)."""
        return default if self.delete_remotely is None else self.delete_remotely

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data of this fingerprint, stored with each job created from it."""
        return self.model_dump(mode="json")


def _printable(token: str, source: str) -> str:
    """The token, unless it holds a control character (the message never shows it)."""
    if has_control_character(token):
        raise TokenUnavailable(
            f"{source} holds a control character (such as CR or LF): refused "
            "(the token is not shown)"
        )
    return token


KNOWN_KEYS = tuple(Fingerprint.model_fields)
DESTINATION_KEYS = tuple(Destination.model_fields)
TLS_KEYS = tuple(DestinationTls.model_fields)
