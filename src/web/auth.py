"""Who may ask what. Every route but /healthz and /readyz needs a principal: a script or
Prometheus with the bearer token (API_TOKEN: the operator's rights), or a person logged in
to the console with a session cookie (a user of USERS_FILE: viewer or operator).

- Reading (GET) needs a principal; anything else (retry, cancel, a fingerprint edited)
  needs an operator, and, from a session, the session's CSRF token (header X-CSRF-Token,
  or the form field csrf_token): a page of another site cannot act with the cookie.
- A wrong or missing token, or a wrong password, is one WARNING line with the peer's
  address (never the token, the password or the name typed). A peer that failed
  FAILURES_ALLOWED times within FAILURE_WINDOW seconds has its next wrong tokens, and all
  its logins, refused (429) until the window has passed: guessing is slowed to a few tries
  a minute. The right token always passes (a 256-bit token is not guessed; a client
  sharing an address with a guesser is not locked out). The address is the connection's
  own: uvicorn is told not to trust X-Forwarded-For.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import quote

from fastapi import HTTPException, Request, status
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from isdr.db.sessions import find_session
from isdr.web.context import WebContext
from isdr.web.users import Role

logger = logging.getLogger(__name__)

FAILURES_ALLOWED = 5
FAILURE_WINDOW = 60.0  # seconds
SESSION_COOKIE = "isdr_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
READ_METHODS = frozenset({"GET", "HEAD"})
_lock = threading.Lock()


@dataclass(frozen=True)
class Principal:
    """Who asks: the token's holder, or a person with a session."""

    name: str
    role: Role
    csrf: str = ""  # the session's CSRF token; "" for the bearer token


TOKEN_HOLDER = "API_TOKEN"


class LoginNeeded(Exception):
    """A page asked without a session: the app answers with the login page."""

    def __init__(self, target: str, from_htmx: bool = False) -> None:
        super().__init__(target)
        self.target = target  # quoted, for ?next=
        self.from_htmx = from_htmx  # a partial asked: the whole page must go to the login


def peer_of(request: Request) -> str:
    """The address the request came from."""
    return request.client.host if request.client is not None else "?"


def bearer(request: Request) -> str:
    """The token the request carries, or ""."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def principal_of(request: Request) -> Principal:
    """The principal a route's dependency found (set on the request's state)."""
    found = getattr(request.state, "principal", None)
    assert isinstance(found, Principal), "route without an access dependency"
    return found


def require_access(
    context: WebContext, now: Callable[[], float] = time.monotonic
) -> Callable[[Request], Awaitable[None]]:
    """The API's dependency: a principal, with the rights the method needs (else 401/403)."""

    async def check(request: Request) -> None:
        found = await run_in_threadpool(_authenticate, context, request, now)
        if found is None:
            _refuse_anonymous(context, request, now)
        await _authorize(request, found)

    return check


def require_page_access(context: WebContext) -> Callable[[Request], Awaitable[None]]:
    """The pages' dependency: as the API's, but without a session the login page answers."""

    async def check(request: Request) -> None:
        found = await run_in_threadpool(_authenticate, context, request, time.monotonic)
        if found is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginNeeded(quote(target, safe="/"), bool(request.headers.get("hx-request")))
        await _authorize(request, found)

    return check


def _authenticate(
    context: WebContext, request: Request, now: Callable[[], float]
) -> Principal | None:
    token = bearer(request)
    if token:
        return _by_token(context, request, token, now)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    try:
        session = find_session(context.reader, cookie, context.clock()) if cookie else None
    except SQLAlchemyError as exc:  # busy or gone: the session cannot be told now
        raise HTTPException(503, "the database does not answer: try again") from exc
    user = context.users.get(session.user) if session is not None else None
    if session is None or user is None or user.stamp != session.stamp:
        return None  # none, ended, or its person removed or given a new password
    return Principal(user.name, user.role, session.csrf)


def _by_token(
    context: WebContext, request: Request, token: str, now: Callable[[], float]
) -> Principal:
    if not context.token:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "no API_TOKEN (or API_TOKEN_FILE) is set: a bearer token opens nothing",
        )
    if hmac.compare_digest(token.encode(), context.token.encode()):
        return Principal(TOKEN_HOLDER, Role.OPERATOR)
    _refuse_anonymous(context, request, now)


def _refuse_anonymous(context: WebContext, request: Request, now: Callable[[], float]) -> NoReturn:
    """Raise the answer to a request without the right token or a session."""
    peer = peer_of(request)
    if not context.token and not context.users.configured:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "no API_TOKEN (or API_TOKEN_FILE) is set and USERS_FILE names nobody: only "
            "/healthz and /readyz are served",
        )
    reserve_failure(context, peer, now())  # 429 if it failed too often, else counted
    logger.warning("HTTP %s %s from %s: %s", request.method, request.url.path, peer,
                   "wrong token" if bearer(request) else "no token")  # fmt: skip
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "a bearer token (Authorization: Bearer ...) or a console session is needed",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _authorize(request: Request, principal: Principal) -> None:
    request.state.principal = principal
    if request.method in READ_METHODS:
        return
    if principal.role != Role.OPERATOR:
        logger.warning("HTTP %s %s from %s: %s is a viewer", request.method,
                       request.url.path, peer_of(request), principal.name)  # fmt: skip
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an operator may do this")
    if principal.csrf and not hmac.compare_digest(
        (await _csrf_sent(request)).encode(), principal.csrf.encode()
    ):
        logger.warning("HTTP %s %s from %s: no CSRF token, or a wrong one", request.method,
                       request.url.path, peer_of(request))  # fmt: skip
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form's CSRF token is missing or wrong")


async def _csrf_sent(request: Request) -> str:
    sent = request.headers.get(CSRF_HEADER, "")
    if sent:
        return sent
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        field = (await request.form()).get(CSRF_FIELD, "")
        return field if isinstance(field, str) else ""
    return ""


def reserve_failure(context: WebContext, peer: str, now: float) -> Callable[[], None]:
    """Count a try as a failure before it is judged (429 if the peer failed too often
    lately): parallel tries cannot all pass the check before any is counted. Returns what
    takes the count back when the try succeeds."""
    with _lock:
        recent = [at for at in context.failures.get(peer, []) if now - at < FAILURE_WINDOW]
        if len(recent) >= FAILURES_ALLOWED:
            context.failures[peer] = recent
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                "too many wrong tokens or passwords from this address: try again in a minute",
                headers={"Retry-After": str(int(FAILURE_WINDOW))},
            )
        context.failures[peer] = [*recent, now]
        if len(context.failures) > 10_000:  # a scan from many addresses: forget the oldest
            oldest = min(context.failures, key=lambda key: context.failures[key][-1])
            del context.failures[oldest]

    def forgive() -> None:
        with _lock:
            mine = context.failures.get(peer, [])
            if now in mine:
                mine.remove(now)
            if not mine:
                context.failures.pop(peer, None)

    return forgive
