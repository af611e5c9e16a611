"""The heartbeat: every HEARTBEAT_INTERVAL seconds (a setting), each InferenceServer the
fingerprints name is asked for a task it never had; it is up when it answers as its
generation does (generation 1: 554, generation 2: 500, 552 or 554). What it answered is
recorded, so the metrics and the API say which servers answer, and since when."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping

from sqlalchemy import Engine

from isdr.db.servers import record_check
from isdr.domain.clock import Clock
from isdr.domain.fingerprint import Fingerprint, TokenUnavailable
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
    ) -> None:
        self.engine = engine
        self.fingerprints = fingerprints
        self.client = client
        self.clock = clock

    def tick(self) -> None:
        """One heartbeat of every server (one server's trouble never stops the others)."""
        for target in self._targets():
            guarded(logger, f"heartbeat of {target.server}", self._beat, target)

    def _targets(self) -> list[Target]:
        found: dict[tuple[str, int], Target] = {}
        for fingerprint in self.fingerprints().values():
            try:
                target = Target.of(fingerprint)
            except TokenUnavailable:
                continue  # said by the fingerprint check and at submit
            found.setdefault((target.url, target.api), target)
        return list(found.values())

    def _beat(self, target: Target) -> None:
        answer = self.client.probe(target, "isdr-heartbeat-" + secrets.token_hex(8))
        up, detail = verdict(target.api, answer.status, answer.detail)
        record_check(self.engine, target.url, target.api, up, detail, self.clock())
