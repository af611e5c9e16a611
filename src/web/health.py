"""/healthz (the process lives) and /readyz (it can do its work), without a token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from isdr.web.context import Check, WebContext


class Readiness(BaseModel):
    """Each check's verdict: "ok", or what is wrong."""

    ready: bool
    checks: dict[str, str]


def _verdict(check: Check) -> str:
    """ "ok", or what is wrong; a check that fails is a failed check, not an error."""
    try:
        return check() or "ok"
    except Exception as exc:  # noqa: BLE001 (any failure of a check is "not ready")
        return f"the check failed ({type(exc).__name__})"


def health_router(context: WebContext) -> APIRouter:
    """The two routes a load balancer, Docker or Kubernetes may ask without a token."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process lives and answers HTTP."""
        return {"status": "alive"}

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    def readyz() -> JSONResponse:
        """The database answers, the Store SCP listens, the disk reserve holds: 200, else
        503 naming the check that failed."""
        verdicts = {name: _verdict(check) for name, check in context.checks.items()}
        ready = all(verdict == "ok" for verdict in verdicts.values())
        body = Readiness(ready=ready, checks=verdicts).model_dump()
        return JSONResponse(body, status_code=200 if ready else 503)

    return router
