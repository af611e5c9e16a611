"""A deadline over a whole exchange with a server, not only between its bytes.

httpx's timeouts bound each read: a server that drips a byte every few seconds never
trips them, and holds the thread that reads it for as long as it likes. Each exchange
gets a `Deadline` instead: `grace` seconds (POST_TIMEOUT) from its start, plus one second
per `rate` bytes moved (TRANSFER_MIN_RATE_KB), so a big upload or output may take its time
while it flows, and a drip may not. One `Reaper` thread per client shuts the socket of
an exchange whose deadline passed: whatever the reading thread is blocked in (headers,
body, a TLS record) ends there, and the deadline is marked `fired` so that the end of
the stream is not mistaken for the end of the answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Deadline:
    """When one exchange must be over."""

    grace: float  # seconds from the start
    rate: float  # bytes per second moved that extend it
    start: float = field(default_factory=time.monotonic)
    moved: int = 0
    fired: bool = False  # the reaper cut the exchange

    def at(self) -> float:
        """The monotonic time at which the exchange is cut."""
        return self.start + self.grace + self.moved / self.rate

    def add(self, count: int) -> None:
        """`count` more bytes went or came: the deadline moves on accordingly."""
        self.moved += count

    def describe(self) -> str:
        """The limit in words, for a message."""
        return (
            f"POST_TIMEOUT ({self.grace:g} s) plus 1 s per {self.rate / 1000:g} kB moved "
            "(TRANSFER_MIN_RATE_KB)"
        )


class Reaper:
    """Shuts the sockets of exchanges that outlived their deadline (one thread, started
    with the first exchange)."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[socket.socket, Deadline]] = {}
        self._condition = threading.Condition()
        self._wake_at = float("inf")
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline, sock: socket.socket | None) -> None:
        """Cut `sock` when `deadline` passes (a later call for the same deadline replaces
        the socket: TLS wraps a new one round the first)."""
        if sock is None:
            return
        with self._condition:
            self._watched[id(deadline)] = (sock, deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="isdr-reaper", daemon=True)
                self._thread.start()
            if deadline.at() < self._wake_at:
                self._condition.notify()

    def forget(self, deadline: Deadline) -> None:
        """The exchange is over: its socket is no longer watched."""
        with self._condition:
            self._watched.pop(id(deadline), None)

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for key, (sock, deadline) in list(self._watched.items()):
                    if deadline.at() <= now:
                        del self._watched[key]
                        deadline.fired = True
                        _cut(sock)
                self._wake_at = min((d.at() for _s, d in self._watched.values()), default=now + 60)
                self._condition.wait(timeout=max(0.01, self._wake_at - now))


def _cut(sock: socket.socket) -> None:
    """Shut the connection down (the plain socket's shutdown, also under TLS: a blocked
    read returns at once, and the TLS object is left alone for the thread that owns it)."""
    with contextlib.suppress(OSError):  # already closed: nothing to cut
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
