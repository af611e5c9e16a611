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

from isdr.domain.deid import Deidentify, options_of
from isdr.domain.destination import Destination, DestinationTls, Scu, ToSender
from isdr.errors import IsdrError


class TokenUnavailable(IsdrError):
    """The token's variable or file named by a fingerprint cannot be read."""


Regex = Annotated[str, Field(description="a regular expression, searched case-insensitively")]


def has_control_character(text: str) -> bool:
    """Whether the text holds a control character (CR, LF, NUL, DEL, ...): never valid in
    an HTTP header, and a way to forge log lines."""
    return any(unicodedata.category(character) == "Cc" for character in text)


_RULE_KEYS = (
    "modality_regex",
    "series_description_regex",
    "study_description_regex",
    "sop_class_uid_regex",
    "calling_ae_title_regex",
    "exclude_regex",
)
ExpectedInstances = Annotated[int, Field(ge=1)] | Literal["from_data"]
MAX_WAIT_LIMIT = 7 * 24 * 3600.0  # seconds: a week


def _compiles(value: str) -> str:
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


class SeriesRules(BaseModel):
    """What a series must be to be taken, and when it is complete: a flat fingerprint's
    top-level keys, and each trigger's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality_regex: Regex = ""
    series_description_regex: Regex = ""
    study_description_regex: Regex = ""
    sop_class_uid_regex: Regex = ""
    calling_ae_title_regex: Regex = ""  # the sender's AE title: one node, several departments
    exclude_regex: Regex = "a^"
    min_instances: int = Field(1, ge=1)  # a series with fewer is not taken
    # Complete only once it holds this many instances, or as many as its data says.
    expected_instances: ExpectedInstances | None = None
    # Complete only once its slices are evenly spaced, with no gap and no duplicate.
    check_geometry: bool = False

    @field_validator(*_RULE_KEYS)
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        return _compiles(value)


class Trigger(SeriesRules):
    """One series a fingerprint needs: the rules it must meet, how many such series, and
    when such a series counts as complete."""

    name: str = Field("", max_length=64)  # said in reasons: "no series for trigger 'MR T1'"
    min_series: int = Field(1, ge=1)
    max_series: int | None = Field(None, ge=1)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        if has_control_character(name):
            raise ValueError("the name holds a control character")
        return name

    @model_validator(mode="after")
    def _counts_agree(self) -> Trigger:
        if self.max_series is not None and self.max_series < self.min_series:
            raise ValueError("max_series is smaller than min_series")
        return self

    @property
    def label(self) -> str:
        """How reasons name it: its name, or the rules it stands for."""
        return self.name or self.modality_regex or "series"

    @property
    def checks_completeness(self) -> bool:
        """Whether a series meeting it is checked beyond being settled."""
        return self.check_geometry or self.expected_instances is not None


class Fingerprint(SeriesRules):
    """One fingerprint file: its top-level rules are the one trigger of a flat fingerprint."""

    # Errors never quote the input: it may be a token.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    # None: the pool of every server in SERVERS_FILE that lists the model serves it.
    inference_server_url: AnyHttpUrl | None = None
    model_human_readable_id: str = Field(min_length=1)
    # With no URL: only these servers of SERVERS_FILE (by name) may take its jobs.
    inference_servers: list[str] | None = Field(None, min_length=1, max_length=1000)
    scus: list[Scu] = Field(default_factory=list)
    inference_server_api: Literal[1, 2] = 1
    description: str = ""
    # "optional": a model that writes no DICOM (a report only) succeeds without one.
    dicom_output: Literal["required", "optional"] = "required"
    delete_remotely: bool | None = None
    inference_server_token: SecretStr | None = None
    # Or, kept out of the fingerprint file and out of the database's job copies:
    inference_server_token_env: str | None = Field(None, min_length=1)  # a variable's name
    inference_server_token_file: str | None = Field(None, min_length=1)  # a file's path
    # Several series of one study, each meeting its own trigger: one job holding them all.
    triggers: list[Trigger] = Field(default_factory=list, max_length=16)
    # A series is complete when the association that sent it is released (not only after
    # POST_AFTER seconds of quiet), if that association sent all of it, 2 instances or more.
    complete_on_association_end: bool = False
    # Seconds a series (study) that meets the fingerprint in part, or is incomplete, is
    # waited for from its first instance; then it ends visibly, not submitted.
    max_wait: float = Field(3600.0, gt=0, le=MAX_WAIT_LIMIT)
    # De-identify what is sent (DICOM PS3.15 Annex E), and re-identify what comes back:
    # true for the profile's defaults, or its options (isdr.domain.deid.Deidentify).
    deidentify: bool | Deidentify = False

    @field_validator("inference_server_token")
    @classmethod
    def _printable_token(cls, token: SecretStr | None) -> SecretStr | None:
        return printable_secret(token)

    @field_serializer("inference_server_token", when_used="json")
    def _reveal_token(self, token: SecretStr | None) -> str | None:
        # The job's snapshot must keep the token to use it; logs never print snapshots.
        return token.get_secret_value() if token is not None else None

    @model_validator(mode="after")
    def _one_token_source(self) -> Fingerprint:
        one_token_source(
            self.inference_server_token,
            self.inference_server_token_env,
            self.inference_server_token_file,
            "inference_server_token",
        )
        return self

    @model_validator(mode="after")
    def _url_or_pool(self) -> Fingerprint:
        if self.inference_server_url is None:
            # By value, not by presence: a job's copy holds every key with its default.
            given = [key for key in _SERVER_KEYS if getattr(self, key) is not None]
            given += ["inference_server_api"] if self.inference_server_api != 1 else []
            if given:
                raise ValueError(
                    f"{', '.join(given)}: only with inference_server_url; a fingerprint served "
                    "by a pool takes the API and token from each server's entry in SERVERS_FILE"
                )
        elif self.inference_servers is not None:
            raise ValueError(
                "give inference_server_url (one server) or inference_servers (names in "
                "SERVERS_FILE), not both"
            )
        return self

    @property
    def pooled(self) -> bool:
        """Whether a pool of SERVERS_FILE serves it (it names no URL)."""
        return self.inference_server_url is None

    @property
    def server_label(self) -> str:
        """Its server as people read it: the URL, or the pool."""
        if self.inference_server_url is not None:
            return str(self.inference_server_url)
        names = ", ".join(self.inference_servers or ())
        return f"the pool of {names}" if names else "the pool of its model"

    @model_validator(mode="after")
    def _rules_in_one_place(self) -> Fingerprint:
        if not self.triggers:
            return self
        fields = type(self).model_fields
        keys = (*_RULE_KEYS, *_COMPLETENESS_KEYS)
        flat = [key for key in keys if getattr(self, key) != fields[key].default]
        if flat:
            raise ValueError(
                f"with triggers, give {', '.join(flat)} in each trigger, not at the top level"
            )
        names = [trigger.name for trigger in self.triggers]
        if len(self.triggers) > 1 and ("" in names or len(set(names)) < len(names)):
            raise ValueError("with several triggers, give each a name of its own")
        return self

    @property
    def study_level(self) -> bool:
        """Whether it matches a study (its triggers) rather than one series at a time."""
        return bool(self.triggers)

    def rules(self) -> tuple[Trigger, ...]:
        """Its triggers; a flat fingerprint is one trigger made of its top-level rules."""
        if self.triggers:
            return tuple(self.triggers)
        keys = (*_RULE_KEYS, *_COMPLETENESS_KEYS)
        return (Trigger.model_validate({key: getattr(self, key) for key in keys}),)

    def token(self) -> str | None:
        """The token to send, read from the environment or its file when named so;
        TokenUnavailable when it cannot be read or holds a control character."""
        return read_token(
            self.inference_server_token,
            self.inference_server_token_env,
            self.inference_server_token_file,
            "inference_server_token",
        )

    @property
    def nodes(self) -> list[Destination]:
        """The destinations its `scus` name by address (not "the sender")."""
        return [scu for scu in self.scus if isinstance(scu, Destination)]

    @property
    def to_sender(self) -> bool:
        """Whether its `scus` include "the sender"."""
        return any(isinstance(scu, ToSender) for scu in self.scus)

    def deid_options(self, server: bool | Deidentify = False) -> Deidentify | None:
        """The de-identification its jobs get: its own `deidentify`, else that of the
        server they go to (a server outside the hospital); None: none."""
        return options_of(self.deidentify) or options_of(server)

    def deletes_remotely(self, default: bool) -> bool:
        """Whether the remote task is deleted: `delete_remotely`, else the default
        (ASK_INFERENCE_SERVER_TO_DELETE_TASK)."""
        return default if self.delete_remotely is None else self.delete_remotely

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data of this fingerprint, stored with each job created from it."""
        return self.model_dump(mode="json")


def printable_secret(token: SecretStr | None) -> SecretStr | None:
    """The token, unless it holds a control character: ValueError (never showing it)."""
    if token is not None and has_control_character(token.get_secret_value()):
        raise ValueError(
            "the token holds a control character (such as CR or LF): refused "
            "(the token is not shown)"
        )
    return token


def one_token_source(
    inline: SecretStr | None, variable: str | None, file: str | None, key: str
) -> None:
    """ValueError when more than one of `key`, `key`_env and `key`_file is given."""
    if sum(source is not None for source in (inline, variable, file)) > 1:
        raise ValueError(f"give at most one of {key}, {key}_env and {key}_file")


def read_token(
    inline: SecretStr | None, variable: str | None, file: str | None, key: str
) -> str | None:
    """A token given inline (`key`), in an environment variable (`key`_env) or a file
    (`key`_file); TokenUnavailable when it cannot be read or holds a control character."""
    if inline is not None:
        return inline.get_secret_value()
    if variable is not None:
        source = f"the variable {variable} ({key}_env)"
        value = os.environ.get(variable)
        if value is None:
            raise TokenUnavailable(f"{source} is not set")
        return _printable(value.strip(), source)
    if file is not None:
        source = f"{key}_file {file}"
        try:
            text = Path(file).read_text().strip()
        except OSError as exc:
            raise TokenUnavailable(f"cannot read {source}: {exc.strerror}") from exc
        return _printable(text, source)
    return None


def _printable(token: str, source: str) -> str:
    """The token, unless it holds a control character (the message never shows it)."""
    if has_control_character(token):
        raise TokenUnavailable(
            f"{source} holds a control character (such as CR or LF): refused "
            "(the token is not shown)"
        )
    return token


_SERVER_KEYS = (
    "inference_server_token",
    "inference_server_token_env",
    "inference_server_token_file",
)
_COMPLETENESS_KEYS = ("min_instances", "expected_instances", "check_geometry")
KNOWN_KEYS = tuple(Fingerprint.model_fields)
TRIGGER_KEYS = tuple(Trigger.model_fields)
DESTINATION_KEYS = (*Destination.model_fields, *ToSender.model_fields)
TLS_KEYS = tuple(DestinationTls.model_fields)
