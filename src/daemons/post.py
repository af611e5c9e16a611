"""The post daemon: quiet series are matched, archived and submitted to InferenceServers.

Each tick runs three steps, each claiming rows in one state and moving them on:
route (receiving -> matched/unmatched, creating pending jobs), submit (pending ->
submitting -> submitted, or back to pending with a backoff, or failed), and remove the
files of series that are done with (DELETE_ON_POST).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine

from isdr.db import jobs
from isdr.db.models import Instance, JobState
from isdr.fingerprints.match import SeriesFacts, matching
from isdr.fingerprints.model import Fingerprint
from isdr.inference.archive import Member, archive_name, build_archive
from isdr.inference.client import InferenceClient, Outcome, Target
from isdr.logs import log_exception

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_RETRY_DELAY = 600.0


@dataclass(frozen=True)
class PostSettings:
    """The parts of the configuration the post daemon uses."""

    incoming_dir: Path
    jobs_dir: Path
    post_after: float
    delete_on_post: bool
    max_attempts: int
    retry_delay: float

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: doubling, capped at 10 minutes."""
        return float(min(self.retry_delay * 2.0 ** (attempts - 1), MAX_RETRY_DELAY))


class PostDaemon:
    """Routes quiet series and submits their jobs."""

    def __init__(
        self,
        engine: Engine,
        fingerprints: Callable[[], Mapping[str, Fingerprint]],
        client: InferenceClient,
        settings: PostSettings,
        clock: Clock,
    ) -> None:
        self.engine = engine
        self.fingerprints = fingerprints
        self.client = client
        self.settings = settings
        self.clock = clock
        self.stopping = threading.Event()
        self.busy = threading.Lock()

    def recover(self) -> None:
        """After a stop: a submit that was on the wire is failed, never repeated on its own."""
        for job_id in jobs.interrupted_submits(self.engine, self.clock()):
            logger.warning("job %d was being submitted when the relay stopped: failed", job_id)

    def tick(self) -> None:
        """One round of every step."""
        with self.busy:
            for step in (self.route, self.submit, self.remove_files):
                if self.stopping.is_set():
                    return
                self._guarded(step.__name__, step)

    def route(self) -> None:
        """Match every quiet series: jobs for the matches, or unmatched."""
        now = self.clock()
        cutoff = now - timedelta(seconds=self.settings.post_after)
        fingerprints = self.fingerprints()
        for quiet in jobs.quiet_series(self.engine, cutoff):
            self._guarded(
                f"routing series {quiet.id}", self._route_one, quiet, fingerprints, cutoff, now
            )

    def _route_one(
        self,
        quiet: jobs.QuietSeries,
        fingerprints: Mapping[str, Fingerprint],
        cutoff: datetime,
        now: datetime,
    ) -> None:
        facts = SeriesFacts(
            quiet.modality, quiet.series_description, quiet.study_description, quiet.sop_class_uids
        )
        names = matching(facts, fingerprints)
        snapshots = {name: fingerprints[name].snapshot() for name in names}
        jobs.apply_route(
            self.engine, jobs.Route(quiet.id, snapshots, len(fingerprints)), cutoff, now
        )

    def submit(self) -> None:
        """Submit every job that is due; one job's trouble never stops the others."""
        for job_id in jobs.due_jobs(self.engine, self.clock()):
            if self.stopping.is_set():
                return
            if not self._guarded(f"submitting job {job_id}", self.submit_one, job_id):
                self._fail(job_id, "unexpected error while submitting (see the log)")

    def _guarded(self, what: str, action: Callable[..., None], *args: Any) -> bool:
        """Run one step, or one item of a step; a failure is logged and the rest go on."""
        try:
            action(*args)
        except Exception:  # noqa: BLE001 (the top of a daemon step, per item)
            log_exception(logger, f"post daemon: {what} failed")
            return False
        return True

    def submit_one(self, job_id: int) -> None:
        """Build the job's archive and submit it; record what happened."""
        work = jobs.job_input(self.engine, job_id)
        try:
            fingerprint = Fingerprint.model_validate(work.fingerprint)
        except ValidationError as exc:
            self._fail(job_id, f"the job's copy of its fingerprint is not valid: {exc}")
            return
        api = fingerprint.inference_server_api
        members = [self._member(i, work.series_instance_uid) for i in work.instances]
        target_file = self.settings.jobs_dir / str(job_id) / archive_name(job_id, api)
        try:
            archive = build_archive(target_file, members, api)
        except FileNotFoundError as exc:
            self._fail(job_id, f"an instance file of the series is missing: {exc.filename}")
            return
        except OSError as exc:
            self._retry(job_id, f"cannot build the archive: {exc}")
            return
        target = _target(fingerprint)
        size = archive.stat().st_size / 1e6
        jobs.move(
            self.engine, job_id, JobState.SUBMITTING,
            f"sending {archive.name} ({len(members)} instances, {size:.1f} MB) to "
            f"{target.url} for model {target.model}",
            self.clock(),
        )  # fmt: skip
        answer = self.client.submit(target, archive)
        if answer.outcome is Outcome.DONE:
            jobs.move(
                self.engine, job_id, JobState.SUBMITTED, f"accepted as task {answer.task_uid}",
                self.clock(), task_uid=answer.task_uid, last_error="",
            )  # fmt: skip
            archive.unlink(missing_ok=True)
        elif answer.outcome is Outcome.RETRY:
            self._retry(job_id, answer.detail)
        else:
            self._fail(job_id, answer.detail)

    def remove_files(self) -> None:
        """DELETE_ON_POST: remove the files of series that are unmatched or fully submitted."""
        if not self.settings.delete_on_post:
            return
        for series_id in jobs.series_ready_for_removal(self.engine):
            paths = jobs.removable_paths(self.engine, series_id)
            for relative in paths:
                _remove(self.settings.incoming_dir, relative)
            jobs.mark_files_removed(self.engine, series_id, self.clock())
            logger.info("series %d: removed its %d file(s) (DELETE_ON_POST)", series_id, len(paths))

    def _member(self, instance: Instance, series_instance_uid: str) -> Member:
        return Member(
            path=self.settings.incoming_dir / instance.path,
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            series_instance_uid=series_instance_uid,
        )

    def _retry(self, job_id: int, reason: str) -> None:
        jobs.retry_later(
            self.engine,
            job_id,
            reason,
            self.clock(),
            self.settings.backoff,
            self.settings.max_attempts,
        )

    def _fail(self, job_id: int, reason: str) -> None:
        jobs.move(self.engine, job_id, JobState.FAILED, reason, self.clock(), last_error=reason)


def _target(fingerprint: Fingerprint) -> Target:
    token = fingerprint.inference_server_token
    return Target(
        url=str(fingerprint.inference_server_url),
        api=fingerprint.inference_server_api,
        model=fingerprint.model_human_readable_id,
        token=token.get_secret_value() if token is not None else None,
    )


def _remove(root: Path, relative: str) -> None:
    path = root / relative
    path.unlink(missing_ok=True)
    for folder in path.parents:
        if folder == root or not folder.is_relative_to(root):
            return
        try:
            folder.rmdir()
        except OSError:
            return
