"""A DICOM node the predictions are sent to: one type, from the fingerprint file to the wire.

The fingerprint file's keys (`scu_ip`, `scu_port`, `scu_ae_title`, `tls`) are the field
names; the delivery row keeps the same JSON, and the sender takes this type as it is.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

AE_TITLE_MAX = 16  # characters, PS3.5 6.2 (AE)


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

    @property
    def host(self) -> str:
        """Host name or address."""
        return self.scu_ip

    @property
    def port(self) -> int:
        """TCP port."""
        return self.scu_port

    @property
    def ae_title(self) -> str:
        """AE title."""
        return self.scu_ae_title

    @property
    def label(self) -> str:
        """As people write it: AE@host:port."""
        return f"{self.scu_ae_title}@{self.scu_ip}:{self.scu_port}"

    def __str__(self) -> str:
        return self.label + ("" if self.tls is None else " (TLS)")

    @classmethod
    def at(
        cls, host: str, port: int, ae_title: str, tls: DestinationTls | None = None
    ) -> Destination:
        """A destination from its parts (tests, benchmarks, the demo)."""
        return cls(scu_ip=host, scu_port=port, scu_ae_title=ae_title, tls=tls)


class ToSender(BaseModel):
    """A fingerprint's destination `{"sender": true}`: whoever sent the series (for a
    study, each AE that sent part of it), as SENDERS_FILE knows them. Resolved into
    Destinations when the job's output is recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sender: Literal[True]

    @property
    def label(self) -> str:
        """As people write it."""
        return "the sender"

    def __str__(self) -> str:
        return self.label


def _kind(value: object) -> str:
    if isinstance(value, ToSender) or (isinstance(value, dict) and "sender" in value):
        return "sender"
    return "node"


# One entry of a fingerprint's `scus`: a DICOM node, or "the sender".
Scu = Annotated[
    Annotated[Destination, Tag("node")] | Annotated[ToSender, Tag("sender")],
    Discriminator(_kind),
]
SCU_TAGS = ("node", "sender")  # in validation errors' locations, after scus.<n>
