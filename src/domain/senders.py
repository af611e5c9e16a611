"""The senders a prediction may go back to (SENDERS_FILE), and the pure choice of where
"the sender" of a job is.

    {"senders": [{"ae_title": "CT_SCANNER", "host": "10.1.2.3", "port": 104, "tls": null}]}

A sender is known by its AE title. When its `host` is an address, the association must
have come from that address too: an AE title is only what the sender says it is, and a
relay serving several hospitals must never send one hospital's predictions to another.
An AE title not in the file is sent back to the association's address at
SENDER_FALLBACK_PORT when that is set, and otherwise not at all: the delivery fails,
saying why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from isdr.domain.destination import AE_TITLE_MAX, Destination, DestinationTls

SEVERAL = "*"  # the address of a round that several senders sent (isdr.db.series)


class KnownSender(BaseModel):
    """One AE that may get predictions back, and where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: str = Field(min_length=1, max_length=AE_TITLE_MAX, pattern=r"\S")
    host: str = Field(min_length=1, description="its address (checked) or host name")
    port: int = Field(ge=1, le=65535)
    tls: DestinationTls | None = None


class KnownSenders(BaseModel):
    """The whole senders file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    senders: list[KnownSender] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_entry_per_title(self) -> KnownSenders:
        titles = [sender.ae_title.strip() for sender in self.senders]
        repeated = sorted({title for title in titles if titles.count(title) > 1})
        if repeated:
            raise ValueError(f"an AE title may appear once: {', '.join(repeated)}")
        return self

    def find(self, ae_title: str) -> KnownSender | None:
        """The entry of an AE title (spaces around it do not count)."""
        wanted = ae_title.strip()
        return next((s for s in self.senders if s.ae_title.strip() == wanted), None)


@dataclass(frozen=True)
class Sent:
    """Who sent a series round: its calling AE title and the association's address ("":
    its files were placed in INCOMING_DIR, not sent over DICOM)."""

    ae_title: str
    address: str


@dataclass(frozen=True)
class SenderRefused:
    """A sender its predictions cannot go back to, and why."""

    ae_title: str
    reason: str


def resolve(
    sent: Sequence[Sent], known: KnownSenders, fallback_port: int
) -> tuple[list[Destination], list[SenderRefused]]:
    """Where "the sender" of a job is: one destination per AE that sent part of it (in
    the order given, each once), and the senders that cannot be sent to."""
    found: list[Destination] = []
    refused: list[SenderRefused] = []
    for who in dict.fromkeys(sent):
        where = _where(who, known, fallback_port)
        if isinstance(where, SenderRefused):
            refused.append(where)
        elif where not in found:
            found.append(where)
    return found, refused


def _where(who: Sent, known: KnownSenders, fallback_port: int) -> Destination | SenderRefused:
    if who.address == SEVERAL:
        return SenderRefused(who.ae_title or "?", "its series came from several senders "
                             "(AE titles or addresses): sent back to none of them")  # fmt: skip
    if not who.address or not who.ae_title.strip():
        return SenderRefused(who.ae_title or "?", "its files were placed in INCOMING_DIR, "
                             "not sent over DICOM: there is no sender to send back to")  # fmt: skip
    entry = known.find(who.ae_title)
    if entry is not None:
        if _is_address(entry.host) and not _same_address(entry.host, who.address):
            return SenderRefused(who.ae_title, f"it called from {who.address}, but "
                                 f"SENDERS_FILE has it at {entry.host}: not sent back")  # fmt: skip
        return Destination.at(entry.host, entry.port, entry.ae_title, entry.tls)
    if fallback_port:
        return Destination.at(who.address, fallback_port, who.ae_title)
    return SenderRefused(who.ae_title, "it is not in SENDERS_FILE (and SENDER_FALLBACK_PORT "
                         "is 0): not sent back")  # fmt: skip


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_address(one: str, other: str) -> bool:
    try:
        first, second = ipaddress.ip_address(one), ipaddress.ip_address(other)
    except ValueError:
        return False
    mapped = getattr(second, "ipv4_mapped", None)  # ::ffff:10.1.2.3 from a dual-stack socket
    return first == second or (mapped is not None and first == mapped)
