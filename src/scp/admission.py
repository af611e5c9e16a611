"""Who gets a connection, and an association, when peers take more than their share.

pynetdicom gives every TCP connection a thread (two, once it runs) from the moment it
is accepted, and counts a connection that has sent nothing as one of its associations:
65 idle sockets lock every real sender out. Here a connection is *waiting* until its
A-ASSOCIATE-RQ is in, then *associated*. Connections are bounded per peer address and
in all; when a bound is reached, the oldest waiting connection (of that peer first) is
closed to make room (one that has said nothing first), so a sender that associates at
once always gets in, however many idle sockets are open. Only when every connection in
the way is associated is the new one refused. Associations have their own bound.

The decisions are pure functions of the open connections; `ConnectionTable` keeps them.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from isdr.scp.guard import guard_of


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds, from SCP_MAX_CONNECTIONS, SCP_MAX_CONNECTIONS_PER_PEER and
    SCP_MAX_ASSOCIATIONS."""

    total: int
    per_peer: int
    associations: int


@dataclass(frozen=True)
class Connection:
    """An open connection as the decisions see it."""

    key: int
    peer: str  # the peer's address
    opened: float
    associated: bool = False
    spoken: bool = False  # it has sent something (its request is on its way)


@dataclass(frozen=True)
class Admission:
    """Whether a new connection may stay, and which waiting ones close for it."""

    evict: tuple[Connection, ...] = ()
    refusal: str | None = None  # why it may not stay; None: it stays


def admit(open_now: Sequence[Connection], peer: str, limits: ConnectionLimits) -> Admission:
    """What to do with a new connection from `peer`, given those open now."""
    evicted: list[Connection] = []
    mine = [c for c in open_now if c.peer == peer]
    if len(mine) >= limits.per_peer:
        victim = _oldest_waiting(mine)
        if victim is None:
            return Admission(refusal=_full(len(mine), "from this address", "PER_PEER"))
        evicted.append(victim)
    if len(open_now) - len(evicted) >= limits.total:
        victim = _oldest_waiting(c for c in open_now if c not in evicted)
        if victim is None:
            return Admission(refusal=_full(len(open_now), "in all", ""))
        evicted.append(victim)
    return Admission(evict=tuple(evicted))


def association_refusal(
    open_now: Sequence[Connection], key: int, limits: ConnectionLimits
) -> str | None:
    """Why the connection `key`, whose A-ASSOCIATE-RQ just came in, may not associate."""
    associated = sum(1 for c in open_now if c.associated and c.key != key)
    if associated < limits.associations:
        return None
    return f"{associated} associations are open, the most allowed (SCP_MAX_ASSOCIATIONS)"


def _oldest_waiting(connections: Iterable[Connection]) -> Connection | None:
    """The waiting connection to close first: one that has said nothing, then the oldest
    (a real sender's request, sent as soon as it connects, is not cut in a crowd)."""
    waiting = [c for c in connections if not c.associated]
    return min(waiting, key=lambda c: (c.spoken, c.opened)) if waiting else None


def _full(count: int, where: str, suffix: str) -> str:
    setting = "SCP_MAX_CONNECTIONS" + (f"_{suffix}" if suffix else "")
    return f"{count} connections {where} are open and associated, the most allowed ({setting})"


@dataclass
class Throttle:
    """One log line per key (a peer) per `every` seconds; the lines held back are counted."""

    every: float = 60.0
    _last: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self, key: str, now: float) -> int | None:
        """How many lines were held back since the last, when one is due now; else None."""
        with self._lock:
            return self._due(key, now)

    def _due(self, key: str, now: float) -> int | None:
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        if len(self._last) > 4096:  # many peers: forget the oldest
            oldest = min(self._last, key=self._last.__getitem__)
            self._last.pop(oldest)
            self._held.pop(oldest, None)
        return self._held.pop(key, 0)


class ConnectionTable:
    """The open connections of a Store SCP, with what each one is (thread-safe).

    A connection is known by its socket from its acceptance, and by its association
    once pynetdicom makes one, so that a waiting one can be told to give up at once.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[int, Connection] = {}
        self._sockets: dict[int, socket.socket] = {}
        self._associations: dict[int, Any] = {}  # key -> association
        self._keys: dict[int, int] = {}  # id(association) -> key

    def admit(self, sock: socket.socket, peer: str, now: float) -> Admission:
        """Decide on a new connection; an admitted one is added, the evicted removed
        (`release` them to close them)."""
        with self._lock:
            self._forget_closed()
            admission = admit(self._snapshot(peer), peer, self.limits)
            if admission.refusal is None:
                for gone in admission.evict:
                    self._open.pop(gone.key, None)
                self._open[id(sock)] = Connection(id(sock), peer, now)
                self._sockets[id(sock)] = sock
        return admission

    def attach(self, sock: object, association: Any) -> bool:
        """Note the association of a connection; False when it was evicted already."""
        with self._lock:
            key = id(sock)
            if key not in self._open:
                return False
            self._associations[key] = association
            self._keys[id(association)] = key
            return True

    def associate(self, association: Any) -> str | None:
        """Mark a connection associated, unless the associations are all taken (why)."""
        with self._lock:
            key = self._keys.get(id(association), -1)
            refusal = association_refusal(list(self._open.values()), key, self.limits)
            if refusal is None and key in self._open:
                self._open[key] = replace(self._open[key], associated=True)
        return refusal

    def release(self, key: int) -> tuple[socket.socket | None, Any]:
        """Forget a connection; its socket and association (None when unknown)."""
        with self._lock:
            return self._release(key)

    def release_association(self, association: Any) -> None:
        """Forget the connection of an association that ended."""
        with self._lock:
            self._release(self._keys.get(id(association), -1))

    def _release(self, key: int) -> tuple[socket.socket | None, Any]:
        self._open.pop(key, None)
        association = self._associations.pop(key, None)
        if association is not None:
            self._keys.pop(id(association), None)
        return self._sockets.pop(key, None), association

    def _snapshot(self, peer: str) -> list[Connection]:
        """The open connections; when a bound is reached, with which have spoken."""
        open_now = list(self._open.values())
        mine = sum(1 for c in open_now if c.peer == peer)
        if mine < self.limits.per_peer and len(open_now) < self.limits.total:
            return open_now
        return [c if c.associated else replace(c, spoken=self._spoken(c.key)) for c in open_now]

    def _spoken(self, key: int) -> bool:
        """Whether a waiting connection has sent anything: bytes read by its guard, or
        bytes (or its end) waiting in the socket."""
        guard = guard_of(self._associations[key]) if key in self._associations else None
        if guard is not None and guard.heard:
            return True
        try:
            return bool(select.select([self._sockets[key]], [], [], 0)[0])
        except (OSError, ValueError):
            return True  # closed: it goes by itself

    def _forget_closed(self) -> None:
        """Connections whose socket was closed without an ending reaching the table."""
        for key in [k for k, sock in self._sockets.items() if sock.fileno() == -1]:
            self._release(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def associations(self) -> int:
        """How many connections are associated now."""
        with self._lock:
            return sum(1 for connection in self._open.values() if connection.associated)
