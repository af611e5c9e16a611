"""The poller: every submitted job is asked for its output every GET_INTERVAL seconds.

One scheduled poll per job, kept in memory (a heap of due times) and taken by a fixed
number of threads (GET_WORKERS): a thousand jobs mean a thousand heap entries, not a
thousand threads. The database is read when the poller starts, when the post daemon hands over
a job, and every few seconds (for `isdr jobs retry` from another process); it is
written only when a job changes state, never for a "still pending".

A poll that gets the output streams it to DATA_DIR/jobs/<id>/, unpacks it safely and
hands the job to the deliverer. A crash at any point leaves the job `submitted`: the
next start polls it again and downloads the output again.
"""

from __future__ import annotations

import heapq
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from sqlalchemy import Engine

from isdr.db import deid, jobs
from isdr.db import delivery as queue
from isdr.deid.files import reidentify_files
from isdr.deid.pseudonyms import Pseudonyms
from isdr.dicom.files import describe
from isdr.domain.backoff import doubling
from isdr.domain.clock import Clock
from isdr.domain.fingerprint import Fingerprint, TokenUnavailable
from isdr.domain.states import Step
from isdr.inference.client import (
    InferenceClient,
    OutputTooLarge,
    PollAnswer,
    Target,
    redirected,
)
from isdr.inference.outputs import judge_output
from isdr.inference.unpack import HostileArchive, Limits, unpack
from isdr.logs import guarded, log_exception

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0  # how often the database is read for jobs handed over by others
UNKNOWN_LIMIT = 3  # consecutive "no such task" answers (API 2's 500) before failing
SLACK = 0.05  # a job due this soon is polled now (GET_INTERVAL is a pace, not a deadline)
BEHIND = 0.1  # how late the schedule may run before a second thread joins in
ERROR_LIMIT = 3  # unexpected errors on one job (polling, downloading, unpacking) before failing


class Verdict(StrEnum):
    """What a poll's answer means for the job."""

    READY = "ready"  # 200: the output is here
    WAIT = "wait"  # pending, running, or not yet known: poll again
    UNKNOWN = "unknown"  # the server does not know the task: fails after a few in a row
    FAILED = "failed"  # the task failed on the server: no more polling
    TROUBLE = "trouble"  # no answer, or a server error: poll again, log once per outage


def judge(
    api: int, status: int | None, *, seen: bool = False, location: str = ""
) -> tuple[Verdict, str]:
    """The meaning of a poll's HTTP status, per API generation; `seen` when an earlier
    poll showed the server had the task (then generation 1's 554 means it is gone);
    `location` where a redirect points (a redirect fails the job, as on a submit)."""
    if status is None:
        return Verdict.TROUBLE, "no answer"
    if 300 <= status < 400:
        return Verdict.FAILED, f"the poll was {redirected(status, location)}"
    if status == 200:
        return Verdict.READY, "output ready"
    if status == 551:
        return Verdict.WAIT, "pending or running"
    if status == 552:
        return Verdict.FAILED, "the server reports that the task failed (552)"
    if status == 553:
        return Verdict.FAILED, "the task finished but its output is missing on the server (553)"
    if status == 554 and api == 1 and seen:
        return Verdict.UNKNOWN, "the task is gone from the server (554 after it was known)"
    if status == 554 and api == 1:
        return Verdict.WAIT, "not known yet (normal right after a submit on API 1)"
    if status == 500 and api == 2:
        return Verdict.UNKNOWN, (
            "the task is gone from the server (generation 2 answers 500 to a deleted or "
            "unknown task)"
        )
    if 400 <= status < 500 or status == 554:
        return Verdict.UNKNOWN, f"the server does not know the task ({status})"
    return Verdict.TROUBLE, f"server error {status}"


def after_error(errors: int, interval: float) -> float | None:
    """Seconds before a job is polled again after its `errors`-th unexpected error (each
    an attempt: the output is downloaded again), doubling from GET_INTERVAL; None: give up."""
    if errors >= ERROR_LIMIT:
        return None
    return doubling(interval, errors)


def where_raised(error: BaseException) -> str:
    """The error's type and the line that raised it: no message (it may hold a path, and
    paths under the job folder can name a patient)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    last = frames[-1]
    return f"{type(error).__name__} in {Path(last.filename).name}:{last.lineno} ({last.name})"


@dataclass(frozen=True)
class PollSettings:
    """The parts of the configuration the poller uses."""

    jobs_dir: Path
    interval: float  # GET_INTERVAL
    timeout: float  # GET_TIMEOUT
    workers: int  # GET_WORKERS
    limits: Limits  # OUTPUT_MAX_MB, OUTPUT_MAX_FILES
    delete_remotely: bool  # ASK_INFERENCE_SERVER_TO_DELETE_TASK
    per_server: int = 2  # GET_WORKERS_PER_SERVER: a slow server holds no more threads


@dataclass(order=True)
class _Item:
    due: float
    job_id: int
    job: queue.PolledJob = field(compare=False)
    target: Target = field(compare=False)
    fingerprint: Fingerprint = field(compare=False)
    unknown: int = field(default=0, compare=False)
    wait: float = field(default=0.0, compare=False)  # extra wait after an unexpected error
    seen: bool = field(default=False, compare=False)  # a poll answered 551: it had the task


class Poller:
    """Polls the submitted jobs on a fixed number of threads sharing one schedule."""

    def __init__(
        self,
        engine: Engine,
        client: InferenceClient,
        settings: PollSettings,
        clock: Clock,
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.clock = clock
        self.on_output: Callable[[], None] = lambda: None  # app.py wakes the deliverer
        self._heap: list[_Item] = []
        self._known: set[int] = set()  # in the heap or being polled
        self._in_flight = 0
        self._busy: dict[str, int] = {}  # polls on the wire per server
        self._parked: dict[str, list[_Item]] = {}  # due, but their server is at its share
        self._down: set[str] = set()  # servers in an outage (logged once)
        self._condition = threading.Condition()
        self._refresh_due = 0.0
        self._timer_held = False  # a thread waits for the next due time
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"isdr-poll-{n}", daemon=True)
            for n in range(settings.workers)
        ]

    def start(self) -> None:
        """Start polling every submitted job."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop taking polls; those on the wire are left to finish or to the process's exit."""
        self._stopping.set()
        with self._condition:
            self._condition.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait up to `timeout` for the polls on the wire to end; whether they did."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._in_flight and time.monotonic() < deadline:
                self._condition.wait(timeout=max(0.0, deadline - time.monotonic()))
            return self._in_flight == 0

    def wake(self, _job_id: int | None = None) -> None:
        """Read the database now: a job was handed over."""
        with self._condition:
            self._refresh_due = 0.0
            self._condition.notify()

    def _work(self) -> None:
        """One polling thread: take the job due first, poll it, put it back."""
        while not self._stopping.is_set():
            item = self._next()
            if item is not None:
                self._finish(item, self._guarded_poll(item))

    def _next(self) -> _Item | None:
        """The next due job (None when it is time to look at the database or to stop).

        One poll at a time while the schedule is kept: threads contending for the GIL cost
        more CPU than they save. Another thread joins only when the job due first is
        BEHIND late (a slow or hung server, or more jobs than one thread can poll). One
        thread at a time waits for the next due time; the others wait to be called.
        """
        if time.monotonic() >= self._refresh_due:
            self._refresh_guarded()
        with self._condition:
            now = time.monotonic()
            self._park_held()
            ready_at = self._ready_at()
            if ready_at is not None and ready_at <= now:
                self._in_flight += 1
                item = heapq.heappop(self._heap)
                server = item.target.server
                self._busy[server] = self._busy.get(server, 0) + 1
                return item
            if self._timer_held:
                self._condition.wait(timeout=1.0)
                return None
            wake = self._refresh_due if ready_at is None else min(ready_at, self._refresh_due)
            self._timer_held = True
            try:
                self._condition.wait(timeout=max(0.001, min(wake - now, 1.0)))
            finally:
                self._timer_held = False
            return None

    def _park_held(self) -> None:
        """Set aside the jobs first in line whose server already has GET_WORKERS_PER_SERVER
        polls on the wire (a slow or dripping server): the others' jobs go first. They come
        back when one of their server's polls ends."""
        share = self.settings.per_server
        while self._heap and self._busy.get(self._heap[0].target.server, 0) >= share:
            item = heapq.heappop(self._heap)
            self._parked.setdefault(item.target.server, []).append(item)

    def _ready_at(self) -> float | None:
        """When the job due first may be taken: SLACK early when no poll is on the wire,
        BEHIND late otherwise."""
        if not self._heap:
            return None
        due = self._heap[0].due
        return due - SLACK if self._in_flight == 0 else due + BEHIND

    def _refresh_guarded(self) -> None:
        with self._condition:
            if time.monotonic() < self._refresh_due:
                return  # another thread is at it
            self._refresh_due = time.monotonic() + REFRESH_SECONDS
        guarded(logger, "poller: reading the submitted jobs", self._refresh)

    def _refresh(self) -> None:
        found = queue.polled_jobs(self.engine)
        with self._condition:
            for job in found:
                if job.job_id not in self._known:
                    self._adopt(job)
            self._condition.notify_all()

    def _adopt(self, job: queue.PolledJob) -> None:
        try:
            fingerprint = job.fingerprint
            target = Target.of(fingerprint, job.server)
        except TokenUnavailable as exc:
            queue.fail(self.engine, job.job_id, Step.POLL, f"cannot poll: {exc}", self.clock())
            return
        self._known.add(job.job_id)
        heapq.heappush(self._heap, _Item(time.monotonic(), job.job_id, job, target, fingerprint))

    def _guarded_poll(self, item: _Item) -> bool:
        """Poll one job; whether to poll it again. An unexpected error is an attempt:
        counted on the job, and a few of them fail it (see `after_error`)."""
        try:
            return self._poll(item)
        except Exception as error:  # noqa: BLE001 (the top of one poll: the others go on)
            item.wait = doubling(self.settings.interval, ERROR_LIMIT)  # if it cannot be counted
            guarded(logger, f"poller: counting job {item.job_id}'s error", self._error, item, error)
            return item.wait > 0

    def _error(self, item: _Item, error: Exception) -> None:
        """Count the error on the job; log its traceback the first time, one line after;
        fail the job at ERROR_LIMIT."""
        what = where_raised(error)
        errors = queue.add_poll_error(
            self.engine, item.job_id, f"unexpected error while polling: {what}", self.clock()
        )
        wait = after_error(errors, self.settings.interval) if errors else None
        item.wait = 0.0 if wait is None else wait
        if errors == 1:
            log_exception(logger, f"poller: job {item.job_id}: unexpected error (attempt 1 of "
                                  f"{ERROR_LIMIT}; polled again in {wait:g} s)")  # fmt: skip
        elif wait is not None:
            logger.warning("poller: job %d: unexpected error again, %s (attempt %d of %d; "
                           "polled again in %g s)", item.job_id, what, errors, ERROR_LIMIT,
                           wait)  # fmt: skip
        if errors and wait is None:
            self._fail(
                item,
                (
                    f"gave up after {errors} unexpected errors while polling, downloading or "
                    f"unpacking its output (the last: {what}; the first has its traceback in the "
                    "log): a fault of the relay or an output it cannot take; `isdr jobs retry` "
                    "polls it again"
                ),
                delete_remotely=item.fingerprint.deletes_remotely(self.settings.delete_remotely),
            )

    def _finish(self, item: _Item, again: bool) -> None:
        with self._condition:
            self._in_flight -= 1
            server = item.target.server
            self._busy[server] -= 1
            unparked = self._parked.pop(server, [])
            for parked in unparked:
                heapq.heappush(self._heap, parked)
            if again and not self._stopping.is_set():
                # Every GET_INTERVAL from when it was due: taken early, it stays on pace.
                item.due = max(item.due, time.monotonic()) + max(self.settings.interval, item.wait)
                item.wait = 0.0
                heapq.heappush(self._heap, item)
            else:
                self._known.discard(item.job_id)
            # The thread waiting for the next due time recomputes it when the job due first
            # changed, or when a poll ended while others are on the wire.
            first = bool(self._heap) and self._heap[0] is item
            wake = self._in_flight or first or unparked
            if self._stopping.is_set() or (self._timer_held and wake):
                self._condition.notify_all()

    def _poll(self, item: _Item) -> bool:
        """One poll; whether the job is to be polled again."""
        if self._timed_out(item):
            return False
        folder = self.settings.jobs_dir / str(item.job_id)
        try:
            answer = self.client.poll(
                item.target, item.job.task_uid, folder / "output.download",
                self.settings.limits.max_bytes,
            )  # fmt: skip
        except OutputTooLarge as exc:
            return self._fail(item, str(exc))
        verdict, detail = judge(
            item.target.api, answer.status, seen=item.seen, location=answer.location
        )
        self._track_outage(item.target, verdict, answer)
        item.seen = item.seen or (verdict is Verdict.WAIT and answer.status == 551)
        if verdict is Verdict.READY and answer.output is not None:
            return self._take_output(item, answer.output)
        if verdict is Verdict.FAILED:  # its upload holds patient data: deleted if asked
            delete = item.fingerprint.deletes_remotely(self.settings.delete_remotely)
            return self._fail(item, detail, delete_remotely=delete)
        item.unknown = item.unknown + 1 if verdict is Verdict.UNKNOWN else 0
        if item.unknown >= UNKNOWN_LIMIT:
            return self._fail(item, f"{detail}, {item.unknown} times in a row")
        return True

    def _timed_out(self, item: _Item) -> bool:
        now = self.clock()
        if now - item.job.submitted_at <= timedelta(seconds=self.settings.timeout):
            return False
        self._fail(
            item, f"timed out: no output within GET_TIMEOUT ({self.settings.timeout:.0f} s)",
            delete_remotely=item.fingerprint.deletes_remotely(self.settings.delete_remotely),
        )  # fmt: skip
        return True

    def _track_outage(self, target: Target, verdict: Verdict, answer: PollAnswer) -> None:
        if verdict is not Verdict.TROUBLE and not self._down:
            return  # the usual case, without taking the lock
        server = target.server
        with self._condition:
            if verdict is Verdict.TROUBLE and server not in self._down:
                self._down.add(server)
                logger.warning(
                    "InferenceServer %s: %s; polling its jobs goes on every %g s "
                    "(logged once per outage)",
                    server, answer.detail, self.settings.interval,
                )  # fmt: skip
            elif verdict is not Verdict.TROUBLE and server in self._down:
                self._down.discard(server)
                logger.info("InferenceServer %s answers again", server)

    def _fail(self, item: _Item, reason: str, *, delete_remotely: bool = False) -> bool:
        queue.fail(
            self.engine, item.job_id, Step.POLL, reason, self.clock(),
            delete_remotely=delete_remotely,
        )  # fmt: skip
        return False

    def _reidentify(self, item: _Item, files: list[Path]) -> list[str] | None:
        """A de-identified job's output back on its patient and study (in place): what was
        refused, in words (nothing for a job that was not de-identified); None when its
        pseudonyms are gone, so that nothing of it may be delivered."""
        server = item.job.server
        asked = item.fingerprint.deid_options(server.deidentify if server else False)
        kept = deid.load(self.engine, item.job_id)
        if kept is None:
            return [] if asked is None else None
        return reidentify_files(files, Pseudonyms.from_json(kept))

    def _take_output(self, item: _Item, archive: Path) -> bool:
        target = archive.parent / "output"
        shutil.rmtree(target, ignore_errors=True)  # from an attempt a crash cut short
        fingerprint = item.fingerprint
        delete = fingerprint.deletes_remotely(self.settings.delete_remotely)
        try:
            unpacked = unpack(archive, target, self.settings.limits)
        except HostileArchive as exc:
            return self._fail(
                item, f"the output archive was refused: {exc}", delete_remotely=delete
            )
        refused = self._reidentify(item, unpacked.files)
        if refused is None:
            shutil.rmtree(target, ignore_errors=True)
            return self._fail(
                item, "the job was de-identified and its pseudonyms are gone (removed with its "
                "files?): its output cannot be put back on the patient, so none is delivered",
                delete_remotely=delete,
            )  # fmt: skip
        files = [path for path in unpacked.files if path.exists()]
        records = [describe(target, path) for path in files]
        archive.unlink(missing_ok=True)
        verdict = judge_output(
            records, unpacked.renamed, unpacked.empty_folders, len(fingerprint.scus),
            dicom_required=fingerprint.dicom_output == "required",
        )  # fmt: skip
        text = verdict.text + (f"; not delivered, not the job's: {'; '.join(refused)}"
                               if refused else "")  # fmt: skip
        if not verdict.usable:
            return self._fail(item, text, delete_remotely=delete)
        # An output with no DICOM file (and a fingerprint that allows it) has nothing to send.
        dicom = any(r.is_dicom for r in records)
        destinations = fingerprint.nodes if dicom else []
        senders = (
            jobs.job_senders(self.engine, item.job_id) if dicom and fingerprint.to_sender else []
        )
        if queue.record_output(
            self.engine, item.job_id, str(target), records, destinations, text,
            self.clock(), senders,
        ):  # fmt: skip
            self.on_output()
        return False
