"""The heartbeat: every HEARTBEAT_INTERVAL seconds (a setting), each InferenceServer the
fingerprints name is asked for a task it never had; it is up when it answers as its
generation does (generation 1: 554, generation 2: 500, 552 or 554). What it answered is
recorded, so the metrics and the API say which servers answer, and since when.

The servers of SERVERS_FILE are asked the same way: their answers are their pools'
probes (see isdr.db.pool: failures in a row take a member out, an answer brings it
back), each change of state one log line."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping

from sqlalchemy import Engine

from isdr.db import pool
from isdr.db.servers import record_check
from isdr.domain.clock import Clock
from isdr.domain.fingerprint import Fingerprint, TokenUnavailable
from isdr.domain.servers import Server, Servers
from isdr.inference.client import NO_SUCH_TASK, InferenceClient, Target
from isdr.logs import guarded

logger = logging.getLogger(__name__)


def verdict(api: int, status: int | None, detail: str) -> tuple[bool, str]:
    """Whether a server that answered `status` (None: no answer) to a poll of a made-up
    task is up, and the words for it."""
    if status is None:
        return False, detail
    if status in NO_SUCH_TASK.get(api, ()):
        return True, f"answered {status}, as generation {api} does"
    return False, f"answered {status} to a poll of a task it never had: not generation {api}?"


class Heartbeat:
    """Asks each server of the loaded fingerprints once per tick."""

    def __init__(
        self,
        engine: Engine,
        fingerprints: Callable[[], Mapping[str, Fingerprint]],
        client: InferenceClient,
        clock: Clock,
        servers: Callable[[], Servers] = Servers,
        down_after: int = 3,
    ) -> None:
        self.engine = engine
        self.fingerprints = fingerprints
        self.client = client
        self.clock = clock
        self.servers = servers
        self.down_after = down_after

    def tick(self) -> None:
        """One heartbeat of every server (one server's trouble never stops the others)."""
        for target in self._targets():
            guarded(logger, f"heartbeat of {target.server}", self._beat, target)
        for server in self.servers().servers:
            guarded(logger, f"probe of {server.name}", self._probe, server)

    def _targets(self) -> list[Target]:
        found: dict[tuple[str, int], Target] = {}
        for fingerprint in self.fingerprints().values():
            if fingerprint.pooled:
                continue  # its pool's servers are probed by name
            try:
                target = Target.of(fingerprint)
            except TokenUnavailable:
                continue  # said by the fingerprint check and at submit
            found.setdefault((target.url, target.api), target)
        return list(found.values())

    def _beat(self, target: Target) -> tuple[bool, str]:
        answer = self.client.probe(target, "isdr-heartbeat-" + secrets.token_hex(8))
        up, detail = verdict(target.api, answer.status, answer.detail)
        record_check(self.engine, target.url, target.api, up, detail, self.clock())
        return up, detail

    def _probe(self, server: Server) -> None:
        try:
            target = Target.of(Fingerprint(model_human_readable_id=server.models[0]), server)
        except TokenUnavailable as exc:
            up, detail = False, f"no token: {exc}"
        else:
            up, detail = self._beat(target)
        change = pool.record(
            self.engine, server.name, probe=True, ok=up, detail=detail, now=self.clock(),
            down_after=self.down_after,
        )  # fmt: skip
        if change is not None:
            (logger.info if up else logger.warning)("InferenceServer %s %s", server.name, change)
