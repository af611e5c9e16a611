"""/login and /logout: people of USERS_FILE get a session cookie for the console.

A wrong name or password is one WARNING line with the peer's address (never what was
typed) and counts toward the address's lockout, as a wrong token does: each try is counted
before its password is checked (and taken back when it was right), so a locked-out
address is refused at once and parallel tries cannot slip past the count.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import RedirectResponse, Response

from isdr.db.sessions import close_session, open_session
from isdr.web.auth import SESSION_COOKIE, peer_of, reserve_failure
from isdr.web.context import WebContext
from isdr.web.templating import page
from isdr.web.users import User

logger = logging.getLogger(__name__)

VERIFYING_AT_ONCE = 2  # password checks running at the same time, at most
VERIFY_WAIT = 5.0  # seconds a login waits for its turn, then 429


def safe_target(target: str) -> str:
    """Where to go after the login: a path of this site only (never //other.site)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_router(context: WebContext) -> APIRouter:
    """The login form and the logout."""
    router = APIRouter(include_in_schema=False)

    @router.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", None, target=safe_target(next),
                    configured=context.users.configured, error="")  # fmt: skip

    @router.post("/login")
    def login(
        request: Request,
        name: Annotated[str, Form(max_length=200)],
        password: Annotated[str, Form(max_length=1000)],
        target: Annotated[str, Form(max_length=2000)] = "/",
    ) -> Response:
        peer = peer_of(request)
        try:
            forgive = reserve_failure(context, peer, time.monotonic())
            user = _verified(context, name, password)
        except HTTPException as exc:
            error = "Too many logins from this address, or at once: wait a minute."
            return page(request, "login.html", None, status_code=exc.status_code,
                        target=safe_target(target), configured=True, error=error)  # fmt: skip
        if user is None:
            logger.warning("console login from %s refused: wrong name or password", peer)
            return page(request, "login.html", None, status_code=401,
                        target=safe_target(target), configured=context.users.configured,
                        error="Wrong name or password.")  # fmt: skip
        forgive()
        token, _ = open_session(context.engine, user.name, user.stamp, context.clock(),
                                context.session_hours)  # fmt: skip
        logger.info("console login of %s (%s) from %s", user.name, user.role, peer)
        response = RedirectResponse(safe_target(target), status_code=303)
        response.set_cookie(
            SESSION_COOKIE, token, max_age=int(context.session_hours * 3600), httponly=True,
            samesite="strict", secure=context.secure_cookies, path="/",
        )  # fmt: skip
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE, "")
        if token:
            close_session(context.engine, token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router


_hashing = threading.BoundedSemaphore(VERIFYING_AT_ONCE)


def _verified(context: WebContext, name: str, password: str) -> User | None:
    """The person if the password is theirs. Each check takes argon2's time and memory
    (about 0.2 s and 64 MiB), so only a few run at once: a flood of logins gets 429
    instead of the relay's memory and CPU."""
    if not _hashing.acquire(timeout=VERIFY_WAIT):
        raise HTTPException(429, "too many logins at once")
    try:
        return context.users.verify(name, password)
    finally:
        _hashing.release()
