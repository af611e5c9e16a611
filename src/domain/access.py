"""Who may send: allow-lists of calling AE titles and of peer networks, and the called AE.

A pure decision, taken when an association is requested; the Store SCP rejects with the
DICOM reason it names (PS3.8 9.3.4: calling or called AE title not recognised, or no
reason given for an address that is not allowed). The relay's own health check is
admitted whatever the lists say, from this machine and for C-ECHO only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NO_REASON = 0x01
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
VERIFICATION = "1.2.840.10008.1.1"  # the SOP class of C-ECHO
# Who the relay's own health check (`isdr echo`) calls as: admitted whatever the
# allow-lists say, but only from this machine and only for Verification.
HEALTH_CHECK_AE_TITLE = "ISDR_ECHO"


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused, and the diagnostic sent in the A-ASSOCIATE-RJ."""

    diagnostic: int
    reason: str


@dataclass(frozen=True)
class AccessPolicy:
    """Empty allow-lists let anyone in; `called_ae_title` None accepts any called AE."""

    calling_ae_titles: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()
    called_ae_title: str | None = None

    def refusal(self, calling: str, called: str, address: str) -> Refusal | None:
        """None when the association may go ahead."""
        if self.networks and not _in_networks(address, self.networks):
            return Refusal(NO_REASON, f"address {address} is not in ALLOWED_PEERS")
        if self.calling_ae_titles and calling.strip() not in self.calling_ae_titles:
            return Refusal(
                CALLING_AE_NOT_RECOGNISED,
                f"calling AE {calling!r} is not in ALLOWED_CALLING_AE_TITLES",
            )
        if self.called_ae_title is not None and called.strip() != self.called_ae_title:
            return Refusal(
                CALLED_AE_NOT_RECOGNISED, f"called AE {called!r} is not {self.called_ae_title!r}"
            )
        return None

    def for_health_check(self) -> AccessPolicy:
        """The policy for the relay's own health check: the allow-lists do not apply, the
        called AE title (REQUIRE_CALLED_AE_TITLE) still does."""
        return replace(self, calling_ae_titles=frozenset(), networks=())


def parse_titles(text: str) -> frozenset[str]:
    """Comma-separated AE titles; each 1-16 characters."""
    titles = frozenset(part.strip() for part in text.split(",") if part.strip())
    too_long = sorted(title for title in titles if len(title) > 16)
    if too_long:
        raise ValueError(f"AE titles are at most 16 characters: {', '.join(too_long)}")
    return titles


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or networks (10.1.2.3, 10.1.0.0/16, ::1)."""
    networks = []
    for part in (part.strip() for part in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise ValueError(f"{part!r} is not an address or network") from exc
    return tuple(networks)


def is_health_check(
    calling: str, address: str, local_address: str, proposed: Sequence[str]
) -> bool:
    """Whether an association request is the relay's own health check: its calling AE
    title, from this machine (loopback, or the address it called), proposing nothing but
    Verification. The allow-lists do not apply to it: all it can do is C-ECHO."""
    return (
        calling.strip() == HEALTH_CHECK_AE_TITLE
        and bool(proposed)
        and all(uid == VERIFICATION for uid in proposed)
        and _from_this_machine(address, local_address)
    )


def _from_this_machine(address: str, local_address: str) -> bool:
    ip = _ip(address)
    return ip is not None and (ip.is_loopback or ip == _ip(local_address))


def _in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in network for network in networks)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4-mapped IPv6 address as IPv4; None if it is not one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
