"""The deliverer: each job's DICOM output is C-STOREd to every destination, then cleaned up.

Each destination of each job is one delivery row, tried on its own with a backoff, so a
destination that is down waits while the others are served. A pool of
DELIVERY_WORKERS threads sends, one association per destination at a time; when one
ends, the destination's next due delivery starts at once, not at the next tick. A job is
delivered once every destination has confirmed every file; then, on a thread of its own
(so that a server slow to answer holds up no delivery), the remote task is deleted (when
configured) and the local files go, except the non-DICOM outputs, which are kept, like a
failed job's files, for JOB_FILES_RETENTION_HOURS.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from isdr.db import delivery as queue
from isdr.domain.backoff import doubling
from isdr.domain.clock import Clock
from isdr.domain.destination import AE_TITLE_MAX, Destination
from isdr.domain.fingerprint import TokenUnavailable
from isdr.domain.output import OutputRecord
from isdr.domain.senders import KnownSenders, SenderRefused, Sent, resolve
from isdr.domain.states import Step
from isdr.errors import IsdrError
from isdr.inference.client import Answer, InferenceClient, Outcome, Target
from isdr.logs import guarded, log_exception
from isdr.scu.sender import FileToSend, Report, SendOptions, send_files

logger = logging.getLogger(__name__)

REMOTE_DELETE_ATTEMPTS = 12  # with DELIVERY_RETRY_DELAY's doubling (to 10 min): about an hour


@dataclass(frozen=True)
class DeliverSettings:
    """The parts of the configuration the deliverer uses."""

    jobs_dir: Path
    calling_ae_title: str  # SCP_AE_TITLE: the relay calls with its own AE title
    timeout: float  # DELIVERY_TIMEOUT
    workers: int  # DELIVERY_WORKERS
    associations: int  # DELIVERY_ASSOCIATIONS
    retry_delay: float  # DELIVERY_RETRY_DELAY
    max_attempts: int  # DELIVERY_MAX_ATTEMPTS
    retention: float  # JOB_FILES_RETENTION_HOURS, in seconds
    delete_remotely: bool  # ASK_INFERENCE_SERVER_TO_DELETE_TASK
    senders: Callable[[], KnownSenders] = KnownSenders  # SENDERS_FILE, read at each use
    sender_fallback_port: int = 0  # SENDER_FALLBACK_PORT

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: doubling, capped at 10 minutes."""
        return doubling(self.retry_delay, attempts)


class Deliverer:
    """Sends outputs to destinations, finishes delivered jobs, removes expired files."""

    def __init__(
        self, engine: Engine, client: InferenceClient, settings: DeliverSettings, clock: Clock
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.clock = clock
        self.stopping = threading.Event()
        self.ticking = threading.Lock()
        self._busy: set[tuple[str, int, str]] = set()  # destinations with an open association
        self._busy_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="isdr-deliver")
        # Called with a job's id just before its delivered DICOM files are removed (app.py:
        # the console keeps the picture of its prediction).
        self.before_output_removal: Callable[[int], None] | None = None
        self._finisher = _Rounds("isdr-finish")  # a remote delete may wait POST_TIMEOUT,
        self._deleter = _Rounds("isdr-delete")  # ... so neither waits for the other

    def recover(self) -> None:
        """After a stop: deliveries caught sending are taken up again."""
        count = queue.interrupted_deliveries(self.engine, self.clock())
        if count:
            logger.info("%d delivery(ies) interrupted by the last stop: sending again", count)

    def stop(self) -> None:
        """Stop taking deliveries; sessions stop after the file they are sending."""
        self.stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._finisher.shutdown()
        self._deleter.shutdown()

    def idle(self, timeout: float) -> bool:
        """Wait up to `timeout` for open associations and remote deletes to end; whether
        they did."""
        deadline = time.monotonic() + timeout
        if not self.ticking.acquire(timeout=timeout):
            return False
        self.ticking.release()
        while True:
            with self._busy_lock:
                if not self._busy and not self._finisher.busy and not self._deleter.busy:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def tick(self) -> None:
        """Start due deliveries, have jobs whose deliveries ended finished, remove expired
        files."""
        with self.ticking:
            for step in (self.find_senders, self.dispatch, self.finish, self.expire):
                if not self.stopping.is_set():
                    guarded(logger, f"deliverer: {step.__name__}", step)

    def find_senders(self) -> None:
        """Look up in SENDERS_FILE where each sender to send back to is (read afresh, so a
        fixed file counts at the next retry); a sender that cannot be found fails its
        delivery at once, saying why, and the job's other deliveries go on."""
        waiting = queue.senders_to_find(self.engine)
        if not waiting:
            return
        try:
            known, broken = self.settings.senders(), ""
        except IsdrError as exc:
            known, broken = KnownSenders(), f"SENDERS_FILE cannot be used: {exc}"
        for item in waiting:
            where = self._sender(item.sent, known, broken)
            queue.sender_found(self.engine, item.delivery_id, where, self.clock())

    def _sender(self, sent: Sent, known: KnownSenders, broken: str) -> Destination | SenderRefused:
        if broken:  # never a guess: not even the fallback while the file is broken
            return SenderRefused(sent.ae_title, broken)
        try:
            found, refused = resolve([sent], known, self.settings.sender_fallback_port)
        except ValueError as exc:  # a title or address no destination can be made of
            return SenderRefused(sent.ae_title, f"no destination can be made of it: {exc}")
        return found[0] if found else refused[0]

    def dispatch(self) -> None:
        """Hand each due delivery to the pool, unless its destination is already busy."""
        for delivery_id, where in queue.due_deliveries(self.engine, self.clock()):
            if self.stopping.is_set():
                return
            key = (where.host, where.port, where.ae_title)
            with self._busy_lock:
                if key in self._busy:
                    continue  # one association per destination at a time
                work = queue.claim_delivery(self.engine, delivery_id, self.clock())
                if work is None:
                    continue
                self._busy.add(key)
            try:
                self._pool.submit(self._deliver_guarded, work, key)
            except RuntimeError:  # the pool is shut down: the relay is stopping
                return  # left `sending`: the next start takes it up again

    def _deliver_guarded(self, work: queue.DeliveryWork, key: tuple[str, int, str]) -> None:
        try:
            self.deliver(work)
        except Exception:  # noqa: BLE001 (per delivery)
            log_exception(logger, f"delivering job {work.job_id} to {key[2]} failed")
            self._retry(work, "unexpected error while sending (see the log)")
        finally:
            with self._busy_lock:
                self._busy.discard(key)
        if not self.stopping.is_set():
            # the destination's next delivery, now
            guarded(logger, "deliverer: dispatch", self.dispatch)

    def deliver(self, work: queue.DeliveryWork) -> None:
        """One attempt at one destination: send what it has not confirmed yet."""
        where = work.destination
        problem = _uncallable(where)
        if problem is not None:  # no attempt will ever work: this destination fails now
            queue.delivery_retry(
                self.engine, work.delivery_id, problem, self.clock(), self.settings.backoff, 1
            )
            return
        files = [_to_send(work.output_dir, record) for record in work.files]
        options = SendOptions(
            self.settings.calling_ae_title, self.settings.timeout, self.settings.associations
        )

        def confirmed(item: FileToSend, status: int) -> None:
            queue.confirm_file(self.engine, work.delivery_id, item.name, status, self.clock())

        report = send_files(where, files, options, confirmed, self.stopping)
        if report.complete:
            queue.delivery_done(self.engine, work.delivery_id, report.confirmed, self.clock())
        elif self.stopping.is_set():
            return  # left `sending`: the next start takes it up again, no attempt counted
        else:
            self._retry(work, _reason(report, len(files)))

    def _retry(self, work: queue.DeliveryWork, reason: str) -> None:
        queue.delivery_retry(
            self.engine, work.delivery_id, reason, self.clock(), self.settings.backoff,
            self.settings.max_attempts,
        )  # fmt: skip

    def finish(self) -> None:
        """Have the jobs whose deliveries all ended finished, and the due remote deletes
        made, each on a thread of its own: no delivery waits for a slow server."""
        self._finisher.start("finish", self._finish_all)
        self._deleter.start("remote deletes", self._delete_due)

    def _finish_all(self) -> None:
        """Jobs whose deliveries all ended: delivered (and cleaned up), or failed."""
        for done in queue.finished_jobs(self.engine):
            if self.stopping.is_set():
                return
            guarded(logger, f"deliverer: finishing job {done.job_id}", self._finish_one, done)

    def _delete_due(self) -> None:
        """The remote deletes that are due; a server in trouble is skipped for the rest of
        the round, so that it costs one timeout per round, not one per task."""
        troubled: set[str] = set()
        for due in queue.due_remote_deletes(self.engine, self.clock()):
            if self.stopping.is_set():
                return
            try:
                answer = self._delete_remotely(due, troubled)
            except Exception:  # noqa: BLE001 (per task: recorded as a failed attempt)
                log_exception(logger, f"deleting the task of job {due.job_id} failed")
                answer = Answer(Outcome.RETRY, "unexpected error (see the log)")
            if answer is not None:
                self._record_delete(due, answer)

    def _finish_one(self, done: queue.Finished) -> None:
        if done.failures:
            reason = "delivery failed: " + "; ".join(done.failures)
            if done.delivered_to:  # partly delivered: say where it did arrive
                reason += f" (delivered to {', '.join(done.delivered_to)})"
            queue.fail(self.engine, done.job_id, Step.DELIVER, reason, self.clock())
            return
        fingerprint = done.fingerprint
        message = self._clean_up(done, bool(fingerprint.scus))
        delete = fingerprint.deletes_remotely(self.settings.delete_remotely)
        queue.mark_delivered(
            self.engine, done.job_id, message, self.clock(), delete_remotely=delete
        )

    def _delete_remotely(self, due: queue.RemoteDelete, troubled: set[str]) -> Answer | None:
        """One attempt at deleting a job's task on its server (None: its server is in
        trouble this round)."""
        try:
            target = Target.of(due.fingerprint, due.server)
        except TokenUnavailable as exc:
            return Answer(Outcome.RETRY, f"no token ({exc})")
        if target.server in troubled:
            return None
        answer = self.client.delete(target, due.task_uid)
        if answer.outcome is Outcome.RETRY:
            troubled.add(target.server)
        return answer

    def _record_delete(self, due: queue.RemoteDelete, answer: Answer) -> None:
        """Write the attempt to the timeline; retried with a backoff (a task left on the
        server holds patient-derived outputs), REMOTE_DELETE_ATTEMPTS times at most."""
        now, retry_at = self.clock(), None
        if answer.outcome is Outcome.DONE:
            message = f"remote clean-up: {answer.detail}"
        elif answer.outcome is Outcome.FAILED:
            message = f"remote clean-up failed: {answer.detail}; the task stays on the server"
        elif due.attempts + 1 >= REMOTE_DELETE_ATTEMPTS:
            message = (
                f"remote clean-up failed {due.attempts + 1} times, last: {answer.detail}; "
                "given up: delete the task on the server by hand"
            )
        else:
            wait = self.settings.backoff(due.attempts + 1)
            retry_at = now + timedelta(seconds=wait)
            message = f"remote clean-up failed ({answer.detail}); next try in {wait:g} s"
        done = answer.outcome is Outcome.DONE
        queue.remote_delete_done(
            self.engine, due.job_id, message, now, done=done, retry_at=retry_at
        )

    def _clean_up(self, done: queue.Finished, has_destinations: bool) -> str:
        folder = self.settings.jobs_dir / str(done.job_id)
        if not has_destinations:
            return f"no destinations in the fingerprint: the output is kept in {folder}"
        if not done.sent:
            return (
                f"no DICOM file to deliver (dicom_output optional): the output is kept in {folder}"
            )
        if self.before_output_removal is not None:
            self.before_output_removal(done.job_id)
        if not done.kept:
            self._remove_folder(done.job_id)
            return f"delivered {len(done.sent)} file(s); local files removed"
        output = Path(done.output_dir) if done.output_dir else folder / "output"
        for name in done.sent:
            (output / name).unlink(missing_ok=True)
        return (
            f"delivered {len(done.sent)} file(s); local DICOM files removed; "
            f"{len(done.kept)} non-DICOM file(s) kept in {output}"
        )

    def expire(self) -> None:
        """Remove the files of failed and delivered jobs older than the retention."""
        before = self.clock() - timedelta(seconds=self.settings.retention)
        for job_id in queue.expired_job_folders(self.engine, before):
            self._remove_folder(job_id)
            logger.info("job %d: files removed (older than JOB_FILES_RETENTION_HOURS)", job_id)

    def _remove_folder(self, job_id: int) -> None:
        shutil.rmtree(self.settings.jobs_dir / str(job_id), ignore_errors=True)
        queue.mark_files_removed(self.engine, job_id, self.clock())


class _Rounds:
    """A thread of its own for a step: one round at a time; a round asked for while one
    runs is skipped (the next tick asks again)."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._last: Future[bool] | None = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """Whether a round is running."""
        with self._lock:
            return self._last is not None and not self._last.done()

    def start(self, what: str, action: Callable[[], None]) -> None:
        """Start a round of `action` unless one is running."""
        with self._lock:
            if self._last is not None and not self._last.done():
                return
            with contextlib.suppress(RuntimeError):  # shut down: the relay is stopping
                self._last = self._pool.submit(guarded, logger, f"deliverer: {what}", action)

    def shutdown(self) -> None:
        """No more rounds; a running one finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _to_send(output_dir: str, record: OutputRecord) -> FileToSend:
    return FileToSend(
        record.name, Path(output_dir) / record.name, record.sop_class_uid,
        record.sop_instance_uid, record.transfer_syntax_uid,
    )  # fmt: skip


def _uncallable(where: Destination) -> str | None:
    """Why a destination can never be called, as its delivery's error (None: it can)."""
    if where.ae_title_too_long:
        return (
            f"AE title {where.ae_title!r} longer than {AE_TITLE_MAX} characters: DICOM allows "
            f"{AE_TITLE_MAX}; shorten scu_ae_title in the fingerprint (new jobs use it)"
        )
    return None


def _reason(report: Report, total: int) -> str:
    if report.error:
        return f"{report.error} ({report.confirmed} of {total} file(s) confirmed)"
    first, why = next(iter(report.refused.items()))
    return f"{len(report.refused)} of {total} file(s) refused, e.g. {first}: {why}"
