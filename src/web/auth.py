"""Bearer-token access: every route but /healthz and /readyz needs the token.

A wrong or missing token is one WARNING line with the peer's address (never the token).
A peer that sent FAILURES_ALLOWED wrong tokens within FAILURE_WINDOW seconds has its next
wrong ones answered 429 until the window has passed: guessing is slowed to a few tries a
minute. The right token always passes, so a client sharing an address with a guesser (a
proxy, this machine) is never locked out. The address is the connection's own: uvicorn
is told not to trust X-Forwarded-For.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable

from fastapi import HTTPException, Request, status

from isdr.web.context import WebContext

logger = logging.getLogger(__name__)

FAILURES_ALLOWED = 5
FAILURE_WINDOW = 60.0  # seconds
_lock = threading.Lock()


def peer_of(request: Request) -> str:
    """The address the request came from."""
    return request.client.host if request.client is not None else "?"


def bearer(request: Request) -> str:
    """The token the request carries, or ""."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def require_token(
    context: WebContext, now: Callable[[], float] = time.monotonic
) -> Callable[[Request], None]:
    """A FastAPI dependency that lets a request through only with the right token."""

    def check(request: Request) -> None:
        peer = peer_of(request)
        if not context.token:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "no API_TOKEN (or API_TOKEN_FILE) is set: only /healthz and /readyz are served",
            )
        if hmac.compare_digest(bearer(request).encode(), context.token.encode()):
            return
        if _locked_out(context, peer, now()):
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                "too many wrong tokens from this address: try again in a minute",
                headers={"Retry-After": str(int(FAILURE_WINDOW))},
            )
        _count_failure(context, peer, now())
        logger.warning("HTTP %s %s from %s: %s", request.method, request.url.path, peer,
                       "wrong token" if bearer(request) else "no token")  # fmt: skip
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is needed (Authorization: Bearer ...)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return check


def _locked_out(context: WebContext, peer: str, now: float) -> bool:
    with _lock:
        recent = [at for at in context.failures.get(peer, []) if now - at < FAILURE_WINDOW]
        context.failures[peer] = recent
        if not recent:
            del context.failures[peer]
        return len(recent) >= FAILURES_ALLOWED


def _count_failure(context: WebContext, peer: str, now: float) -> None:
    with _lock:
        context.failures.setdefault(peer, []).append(now)
        if len(context.failures) > 10_000:  # a scan from many addresses: forget the oldest
            oldest = min(context.failures, key=lambda key: context.failures[key][-1])
            del context.failures[oldest]
