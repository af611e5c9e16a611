"""/api/v1/destinations: where the fingerprints send predictions, and a C-ECHO on request."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from isdr.domain.destination import Destination
from isdr.domain.fingerprint import Fingerprint
from isdr.preflight import check_destination


class DestinationOut(BaseModel):
    """One destination of one fingerprint."""

    fingerprint: str
    position: int  # in the fingerprint's scus
    destination: str  # AE@host:port
    tls: bool


class EchoOut(BaseModel):
    """What a C-ECHO to a destination got."""

    destination: str
    ok: bool
    detail: str


def destinations_router(
    fingerprints: Callable[[], Mapping[str, Fingerprint]], calling_ae_title: str
) -> APIRouter:
    """The destination routes, on the loaded fingerprints."""
    router = APIRouter(prefix="/api/v1/destinations", tags=["destinations"])

    @router.get("", response_model=list[DestinationOut])
    def listed() -> list[DestinationOut]:
        """Every destination of every loaded fingerprint."""
        return [
            DestinationOut(fingerprint=name, position=index, destination=str(scu),
                           tls=isinstance(scu, Destination) and scu.tls is not None)
            for name, fingerprint in sorted(fingerprints().items())
            for index, scu in enumerate(fingerprint.scus)
        ]  # fmt: skip

    @router.post("/{fingerprint}/{position}/echo", response_model=EchoOut)
    def echo(fingerprint: str, position: int) -> EchoOut:
        """A C-ECHO to one destination, as the relay's AE title, over TLS when configured
        (as `isdr fingerprints check --online` does)."""
        found = fingerprints().get(fingerprint)
        if found is None or not 0 <= position < len(found.scus):
            raise HTTPException(404, f"no destination {position} in {fingerprint}")
        scu = found.scus[position]
        if not isinstance(scu, Destination):
            raise HTTPException(409, "the sender is known only per job: nothing to C-ECHO")
        finding = check_destination(scu, calling_ae_title)
        detail = finding.text.removeprefix(f"{scu}: ")
        return EchoOut(destination=str(scu), ok=finding.ok, detail=detail)

    return router
