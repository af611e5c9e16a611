"""The ASGI application: health without a token, everything else with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from isdr import __version__
from isdr.domain.fingerprint import Fingerprint
from isdr.web.api import api_router
from isdr.web.auth import require_token
from isdr.web.context import WebContext
from isdr.web.destinations import destinations_router
from isdr.web.fingerprints import fingerprints_router
from isdr.web.health import health_router
from isdr.web.metrics import render

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    context: WebContext,
    fingerprint_dir: Path,
    fingerprints: Callable[[], Mapping[str, Fingerprint]] = dict,
    calling_ae_title: str = "ISDR",
) -> FastAPI:
    """The relay's HTTP side. The OpenAPI document needs the token too: it is served by a
    route of ours, not FastAPI's open one."""
    app = FastAPI(
        title="ISDR", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    token = Depends(require_token(context))
    app.include_router(health_router(context))
    app.include_router(api_router(context), dependencies=[token])
    app.include_router(fingerprints_router(context, fingerprint_dir), dependencies=[token])
    app.include_router(destinations_router(fingerprints, calling_ae_title), dependencies=[token])

    @app.get("/metrics", dependencies=[token], include_in_schema=False)
    def metrics() -> Response:
        return Response(render(context.reader, context.live), media_type=PROMETHEUS_TEXT)

    @app.get("/openapi.json", dependencies=[token], include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app
