"""The ASGI application: health without a principal, everything else with one.

The API (/api/v1, /metrics, /openapi.json) answers 401 without the token or a session;
the pages answer with the login page. Every answer carries headers that keep it out of
other sites' frames and caches: they may show patient data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from isdr import __version__
from isdr.domain.fingerprint import Fingerprint
from isdr.web.api import api_router
from isdr.web.auth import LoginNeeded, require_access, require_page_access
from isdr.web.context import WebContext
from isdr.web.destinations import destinations_router
from isdr.web.fingerprints import fingerprints_router
from isdr.web.health import health_router
from isdr.web.login import login_router
from isdr.web.metrics import render
from isdr.web.pages import pages_router
from isdr.web.pictures import pictures_router
from isdr.web.policy import POLICY

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
STATIC = Path(__file__).parent / "static"


def create_app(
    context: WebContext,
    fingerprint_dir: Path,
    fingerprints: Callable[[], Mapping[str, Fingerprint]] = dict,
    calling_ae_title: str = "ISDR",
) -> FastAPI:
    """The relay's HTTP side. The OpenAPI document needs a principal too: it is served by
    a route of ours, not FastAPI's open one."""
    app = FastAPI(
        title="ISDR", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    access = Depends(require_access(context))
    page = Depends(require_page_access(context))
    app.include_router(health_router(context))
    app.include_router(login_router(context))
    app.include_router(api_router(context), dependencies=[access])
    app.include_router(fingerprints_router(context, fingerprint_dir), dependencies=[access])
    app.include_router(destinations_router(fingerprints, calling_ae_title), dependencies=[access])
    app.include_router(pages_router(context, fingerprint_dir), dependencies=[page])
    app.include_router(pictures_router(context), dependencies=[page])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(LoginNeeded, _to_login)  # type: ignore[arg-type]
    app.middleware("http")(_guarded)

    @app.get("/metrics", dependencies=[access], include_in_schema=False)
    def metrics() -> Response:
        return Response(render(context.reader, context.live), media_type=PROMETHEUS_TEXT)

    @app.get("/openapi.json", dependencies=[access], include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


async def _to_login(_request: Request, exc: LoginNeeded) -> Response:
    if exc.from_htmx:  # a live part of a page whose session ended: the page goes, not the part
        return Response(status_code=204, headers={"HX-Redirect": "/login"})
    return RedirectResponse(f"/login?next={exc.target}", status_code=303)


async def _guarded(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.url.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response
