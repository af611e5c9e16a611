"""The post daemon: quiet series are matched, archived and submitted to InferenceServers.

Each tick runs three steps, each claiming rows in one state and moving them on:
route (receiving -> matched/unmatched/waiting/incomplete, creating pending jobs; see
isdr.fingerprints.decide), submit (pending ->
submitting -> submitted, or back to pending with a backoff, or failed), and remove the
files of series that are done with (DELETE_ON_POST).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine

from isdr.db import deid, jobs, pool, routing
from isdr.db.models import InvalidSnapshot
from isdr.db.views import InstanceView
from isdr.deid.files import deidentify_files
from isdr.deid.pseudonyms import Pseudonyms, fresh_shift
from isdr.domain.backoff import doubling
from isdr.domain.clock import Clock
from isdr.domain.deid import Deidentify
from isdr.domain.fingerprint import Fingerprint, TokenUnavailable
from isdr.domain.routing import GiveUp, Take
from isdr.domain.servers import Chosen, PoolMember, Server, Servers, choose
from isdr.domain.states import JobState, Step
from isdr.domain.submit import RetryDecision, SubmitCounts, SubmitFailure
from isdr.fingerprints.decide import route_study
from isdr.inference.archive import Member, archive_name, build_archive
from isdr.inference.client import Answer, InferenceClient, Outcome, Target, server_of
from isdr.locks import SharedLock
from isdr.logs import guarded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostSettings:
    """The parts of the configuration the post daemon uses."""

    incoming_dir: Path
    jobs_dir: Path
    post_after: float
    delete_on_post: bool
    max_attempts: int
    retry_delay: float
    ambiguous_resends: int = 2  # POST_AMBIGUOUS_RESENDS
    affinity: float = 3600.0  # POOL_AFFINITY_MINUTES, in seconds
    down_after: int = 3  # SERVER_DOWN_AFTER

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: doubling, capped at 10 minutes."""
        return doubling(self.retry_delay, attempts)


SUSPECT_LIMIT = 3  # bare 500s in a row before "the model is unknown" is the verdict
# PatientIDs that name no one: never a stable pseudonym (each job gets its own).
PLACEHOLDER_IDS = frozenset({"UNKNOWN", "ANONYMOUS", "ANONYMIZED", "NONE", "NULL", "000000"})


def submit_retry(
    counts: SubmitCounts, failure: SubmitFailure, settings: PostSettings, model: str
) -> RetryDecision:
    """What to do after a failed submit: wait and send again, or give up, in words."""
    if failure.suspect_model and counts.suspect_answers >= SUSPECT_LIMIT:
        return RetryDecision(None, (
            f"{failure.reason}, {counts.suspect_answers} times in a row: most likely the "
            f"server does not know the model {model!r} (generation 2 answers an unknown model "
            "with a bare 500): check model_human_readable_id in the fingerprint"
        ))  # fmt: skip
    if failure.maybe_held and counts.ambiguous_submits > settings.ambiguous_resends:
        return RetryDecision(None, (
            f"{failure.reason}; given up after {counts.ambiguous_submits} submits that got no "
            f"answer once the whole archive had gone: the server may hold up to "
            f"{counts.ambiguous_submits} task(s) of this job that the relay cannot see or "
            "delete (see isdr jobs show); `isdr jobs retry` sends it again"
        ))  # fmt: skip
    if counts.attempts >= settings.max_attempts:
        return RetryDecision(None, f"gave up after {counts.attempts} attempts: {failure.reason}")
    # Bare 500s are tried again POST_RETRY_DELAY apart, not doubling: a verdict within a minute.
    wait = settings.retry_delay if failure.suspect_model else settings.backoff(counts.attempts)
    return RetryDecision(
        wait, f"attempt {counts.attempts} failed ({failure.reason}); next in {wait:g} s"
    )


class PostDaemon:
    """Routes quiet series and submits their jobs.

    Routing (with clean-up) and submitting are two scheduled jobs, so that a long upload
    or a server that hangs never holds up the routing of other series. Submits go in one
    lane (a thread) per server: a slow server holds up its own jobs only.
    """

    def __init__(
        self,
        engine: Engine,
        fingerprints: Callable[[], Mapping[str, Fingerprint]],
        client: InferenceClient,
        settings: PostSettings,
        clock: Clock,
        tree_lock: SharedLock,
        servers: Callable[[], Servers] = Servers,
    ) -> None:
        self.engine = engine
        self.fingerprints = fingerprints
        self.servers = servers  # SERVERS_FILE, as last loaded
        self.client = client
        self.settings = settings
        self.clock = clock
        self.tree_lock = tree_lock
        self.stopping = threading.Event()
        self.routing = threading.Lock()
        self.submitting = threading.Lock()
        self._held_warned = False
        self._lanes: dict[str, threading.Thread] = {}  # server -> its submits on the wire
        self._queued: set[int] = set()  # jobs handed to a lane, not yet done with
        self._members: dict[int, str] = {}  # ... those of a pool: the member chosen
        self._lanes_lock = threading.Lock()
        self._wake_at: float | None = None  # when route_soon asked to route
        # Called with a series' id just before its files are removed (app.py: the console
        # keeps its picture); outside the tree lock, so receiving never waits for it.
        self.before_removal: Callable[[int], None] | None = None
        self._wake = threading.Event()
        self.on_new_jobs: Callable[[], None] = lambda: None  # app.py wakes the submitter
        self.on_submitted: Callable[[int], None] = lambda _job_id: None  # ... and the poller

    def recover(self) -> None:
        """After a stop: a submit cut before its last bytes is sent again, a later one fails."""
        cuts = jobs.interrupted_submits(self.engine, self.clock(), self.settings.max_attempts)
        for cut in cuts:
            if cut.failed:
                logger.error("job %d failed: %s", cut.job_id, cut.failed)
            else:
                logger.warning(
                    "job %d: the relay stopped before the whole archive was sent; the server "
                    "cannot have it, so it is sent again", cut.job_id,
                )  # fmt: skip

    def route_tick(self) -> None:
        """Route quiet series, then remove the files of series that are done with."""
        with self.routing:
            for step in (self.route, self.remove_files):
                if not self.stopping.is_set():
                    guarded(logger, f"post daemon: {step.__name__}", step)

    def start_waking(self) -> None:
        """Start the one thread that routes when asked (route_soon), off the schedule."""
        threading.Thread(target=self._wake_loop, name="isdr-route-wake", daemon=True).start()

    def route_soon(self, delay: float) -> None:
        """Route in `delay` seconds, whatever the schedule (an association was released:
        its rounds may be complete). Asks that come while one is pending share it."""
        with self._lanes_lock:
            if self._wake_at is None:
                self._wake_at = time.monotonic() + delay
        self._wake.set()

    def _wake_loop(self) -> None:
        while not self.stopping.is_set():
            with self._lanes_lock:
                due = self._wake_at
            left = 1.0 if due is None else due - time.monotonic()
            if left > 0:
                self._wake.wait(min(left, 1.0))  # a second at most: the stop is seen
                self._wake.clear()
                continue
            with self._lanes_lock:
                self._wake_at = None  # an ask from now on gets a route of its own
            self.route_tick()  # waits for a tick already running, never skipped

    def submit_tick(self) -> None:
        """Start submitting the due jobs (without waiting for the lanes)."""
        with self.submitting:
            guarded(logger, "post daemon: submit", self.dispatch)

    def idle(self, timeout: float) -> bool:
        """Wait up to `timeout` for both ticks and every lane to finish; whether they did."""
        deadline = time.monotonic() + timeout
        for lock in (self.routing, self.submitting):
            if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            lock.release()
        with self._lanes_lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.join(timeout=max(0.0, deadline - time.monotonic()))
        return not any(lane.is_alive() for lane in lanes)

    def route(self) -> None:
        """Decide about every study with a round that may be decided now: jobs for what
        matches, waiting for what is in part there, an end for the rest."""
        fingerprints = self.fingerprints()
        if not fingerprints:
            self._warn_held()
            return
        self._held_warned = False
        now = self.clock()
        cutoff = now - timedelta(seconds=self.settings.post_after)
        for study in routing.studies_to_route(self.engine, cutoff, now):
            what = "post daemon: routing a study"
            guarded(logger, what, self._route_study, study, fingerprints, now)

    def _warn_held(self) -> None:
        if not self._held_warned:
            logger.warning(
                "no usable fingerprint: quiet series stay 'receiving' (or 'waiting') and keep "
                "their files until one is loaded"
            )
            self._held_warned = True

    def _route_study(
        self, study: routing.Study, fingerprints: Mapping[str, Fingerprint], now: datetime
    ) -> None:
        checks = any(t.checks_completeness for f in fingerprints.values() for t in f.rules())
        rounds = routing.open_rounds(self.engine, study, with_slices=checks)
        decided = route_study(rounds, fingerprints, now, self.settings.post_after)
        if not decided.outcomes and not any(
            isinstance(d, Take | GiveUp) for d in decided.decisions
        ):
            return  # nothing new: no write (the Store SCP's writes are not held up)
        if routing.apply_routing(self.engine, study, rounds, decided, fingerprints, now):
            self.on_new_jobs()

    def submit(self) -> None:
        """Submit every job that is due, and wait until it is done."""
        for lane in self.dispatch():
            lane.join()

    def dispatch(self) -> list[threading.Thread]:
        """Start a lane for each server with due jobs and no lane running; those started.

        A pool's job first gets its member (see isdr.domain.servers.choose), or waits.
        One job's or one server's trouble never stops others: a server that is slow or
        hangs holds only its own lane (cut at the exchange's deadline), and the next ticks
        start lanes for the other servers meanwhile.
        """
        with self._lanes_lock:
            busy = {server for server, lane in self._lanes.items() if lane.is_alive()}
            queued = set(self._queued)
            chosen = list(self._members.values())
        lanes: dict[str, list[Submit]] = {}
        due = jobs.due_submits(self.engine, self.clock(), exclude=queued)
        for item in due:
            if item.url:
                lanes.setdefault(server_of(item.url), []).append(Submit(item.job_id))
        pooled = [item for item in due if not item.url]
        holds: dict[int, tuple[str, str, str]] = {}
        if pooled:
            for submit, hold in self._choose(pooled, chosen):
                assert submit.member is not None
                lanes.setdefault(server_of(str(submit.member.url)), []).append(submit)
                holds[submit.job_id] = hold
        started = [(server, work) for server, work in lanes.items() if server not in busy]
        # A study is held by the member its job is on its way to (not one behind a busy lane).
        held = [holds[s.job_id] for _server, work in started for s in work if s.job_id in holds]
        if held:
            keep = timedelta(seconds=self.settings.affinity)
            pool.remember(self.engine, held, self.clock(), keep)
        return [self._start(server, work) for server, work in started]

    def _start(self, server: str, work: list[Submit]) -> threading.Thread:
        lane = threading.Thread(
            target=self._lane, args=(work,), name=f"isdr-submit-{server}", daemon=True
        )
        with self._lanes_lock:
            self._lanes[server] = lane
            self._queued.update(submit.job_id for submit in work)
            self._members.update(
                (submit.job_id, submit.member.name) for submit in work if submit.member
            )
        lane.start()
        return lane

    def _choose(
        self, pooled: list[jobs.DueSubmit], chosen: list[str]
    ) -> list[tuple[Submit, tuple[str, str, str]]]:
        """A member for each of a pool's due jobs, in turn (each choice counts in the
        next), with the (study, model, member) it makes; a job no member can take waits,
        saying why."""
        now = self.clock()
        known = self.servers()
        pools = {item.job_id: known.pool(item.model, item.servers) for item in pooled}
        everyone = {server.name: server for members in pools.values() for server in members}
        keep = timedelta(seconds=self.settings.affinity)
        state = pool.members(self.engine, list(everyone.values()), now, keep)
        for name in chosen:  # handed to a lane, not yet on the wire: in flight already
            if name in state:
                state[name] = _plus_one(state[name])
        held = pool.affinities(self.engine, {(i.study_instance_uid, i.model) for i in pooled}, now)
        work = []
        for item in pooled:
            key = (item.study_instance_uid, item.model)
            members = [state[server.name] for server in pools[item.job_id]]
            choice = choose(members, held.get(key), avoid=item.last_server)
            if not isinstance(choice, Chosen):
                self._wait(item, choice.reason, now)
                continue
            state[choice.name] = _plus_one(state[choice.name])
            held[key] = choice.name
            work.append((Submit(item.job_id, everyone[choice.name], choice.reason),
                         (*key, choice.name)))  # fmt: skip
        return work

    def _wait(self, item: jobs.DueSubmit, reason: str, now: datetime) -> None:
        if item.waiting_for is not None and _kind(item.waiting_for) == _kind(reason):
            return  # said already (only its counts changed): no write
        if pool.wait(self.engine, item.job_id, reason, now):
            logger.info("job %d waits: %s", item.job_id, reason)

    def _lane(self, work: list[Submit]) -> None:
        """Submit one server's due jobs in turn. A server that cannot be reached, or that
        was cut at its deadline, is left for this round: its other jobs wait (no attempt
        counted) instead of each waiting out the timeouts in turn."""
        skipped: set[str] = set()
        try:
            for submit in work:
                if self.stopping.is_set():
                    return
                job_id = submit.job_id
                what = f"post daemon: submitting job {job_id}"
                if not guarded(logger, what, self.submit_one, job_id, skipped, submit):
                    self._fail(job_id, "unexpected error while submitting (see the log)")
                with self._lanes_lock:
                    self._queued.discard(job_id)
                    self._members.pop(job_id, None)
        finally:
            with self._lanes_lock:
                for submit in work:
                    self._queued.discard(submit.job_id)
                    self._members.pop(submit.job_id, None)

    def submit_one(self, job_id: int, unreachable: set[str], submit: Submit | None = None) -> None:
        """Build the job's archive and submit it (to the pool member chosen for it, when
        a pool serves it); record what happened."""
        member = submit.member if submit is not None else None
        try:
            work = jobs.job_input(self.engine, job_id)
        except InvalidSnapshot as exc:
            self._fail(job_id, str(exc))
            return
        fingerprint = work.fingerprint
        if fingerprint.pooled and member is None:
            return  # a pool's job is only sent through dispatch, which chooses its member
        try:
            target = Target.of(fingerprint, member)
        except TokenUnavailable as exc:
            if member is None:
                self._fail(job_id, str(exc))
                return
            # The member's configuration, not the job's: it counts against the member.
            failed = Answer(Outcome.RETRY, f"pool member {member.name}: {exc}")
            self._went_down(member.name, failed)
            self._retry(job_id, SubmitFailure(failed.detail), fingerprint.model_human_readable_id)
            return
        if target.server in unreachable:
            return
        options = fingerprint.deid_options(member.deidentify if member is not None else False)
        built = self._build(job_id, work, target.api, options)  # the member's own generation
        if built is None or self.stopping.is_set():
            return
        archive, note = built
        size = archive.stat().st_size / 1e6
        sending = (
            f"sending {archive.name} ({len(work.instances)} instances, {size:.1f} MB) to "
            f"{target.url} for model {target.model}{note}"
        )
        changes: dict[str, object] = {"archive_sent_at": None}
        if member is not None and submit is not None:
            sending += f" (pool member {member.name}: {submit.reason})"
            changes |= {"server_name": member.name, "server_copy": member, "waiting_for": None}
        if not jobs.move(
            self.engine, job_id, JobState.SUBMITTING, sending, self.clock(),
            source=jobs.PENDING, **changes,
        ):  # fmt: skip
            return  # taken meanwhile
        with self._lanes_lock:
            self._members.pop(job_id, None)  # in flight in the database from now on
        answer = self.client.submit(
            target, archive, lambda: jobs.mark_archive_sent(self.engine, job_id, self.clock())
        )
        if member is not None and answer.outcome is Outcome.FAILED:
            # A refusal by one member (its TLS, its token, its generation, a model it does
            # not serve after all) is that member's: another one may take the job.
            detail = f"{answer.detail} (pool member {member.name}: another member is tried)"
            answer = replace(answer, outcome=Outcome.RETRY, detail=detail)
        self._record(job_id, answer, archive, target, unreachable)
        if member is not None and self._went_down(member.name, answer):
            unreachable.add(target.server)  # the lane's other jobs are chosen again

    def _went_down(self, name: str, answer: Answer) -> bool:
        """Count a pool member's submit for its health: a failure (no answer, a 5xx,
        busy, or a refusal: see submit_one) or a success. Whether this took it out."""
        if self.stopping.is_set():
            return False
        ok = answer.outcome is Outcome.DONE
        change = pool.record(
            self.engine, name, probe=False, ok=ok, detail=answer.detail, now=self.clock(),
            down_after=self.settings.down_after,
        )  # fmt: skip
        if change is not None:
            logger.warning("InferenceServer %s %s", name, change)
        return change is not None and not ok

    def _build(
        self, job_id: int, work: jobs.JobInput, api: int, options: Deidentify | None
    ) -> tuple[Path, str] | None:
        """The job's archive, and what the timeline says of it (its de-identification)."""
        members = [self._member(i, s) for s in work.series for i in s.instances]
        folder = self.settings.jobs_dir / str(job_id)
        note = ""
        try:
            if options is None:
                if deid.load(self.engine, job_id) is not None:
                    deid.forget(self.engine, job_id)  # an earlier attempt's, elsewhere
            else:
                found = self._deidentified(job_id, members, folder / "deid", options)
                if found is None:
                    return None
                members, note = found
            return build_archive(folder / archive_name(job_id, api), members, api), note
        except FileNotFoundError as exc:
            missing = Path(str(exc.filename)).name
            self._fail(job_id, f"an instance file of the series is missing: {missing}")
        except OSError as exc:
            self._retry(job_id, SubmitFailure(f"cannot build the archive: {exc.strerror}"))
        finally:
            shutil.rmtree(folder / "deid", ignore_errors=True)  # the archive holds them
        return None

    def _deidentified(
        self, job_id: int, members: list[Member], folder: Path, options: Deidentify
    ) -> tuple[list[Member], str] | None:
        """De-identified copies of the job's instances, the pseudonyms kept in the database
        before anything is sent (a retry reuses them); None when none may be sent."""
        names = self._pseudonyms(job_id, members, options)
        copies = deidentify_files([m.path for m in members], folder, names, options)
        deid.save(self.engine, job_id, names.to_json(), self.clock())
        if not copies:
            self._fail(job_id, "de-identification left out every instance: "
                       + "; ".join(names.left_out[:5]))  # fmt: skip
            return None
        by_source = {copy.source: copy for copy in copies}
        sent = [
            Member(path=c.path, sop_instance_uid=c.sop_instance_uid, sop_class_uid=c.sop_class_uid,
                   series_instance_uid=c.series_instance_uid, trigger=m.trigger)
            for m in members if (c := by_source.get(m.path)) is not None
        ]  # fmt: skip
        left = f"; left out {len(names.left_out)}: " + "; ".join(names.left_out[:5])
        return sent, f" (de-identified{left if names.left_out else ''})"

    def _pseudonyms(self, job_id: int, members: list[Member], options: Deidentify) -> Pseudonyms:
        kept = deid.load(self.engine, job_id)
        if kept is not None:
            names = Pseudonyms.from_json(kept)
            names.left_out = []
            return names
        names = Pseudonyms()
        if options.stable_patient and members:
            header = dcmread(members[0].path, stop_before_pixels=True)
            patient_id = str(header.get("PatientID", "") or "").strip()
            if len(patient_id) >= 3 and patient_id.upper() not in PLACEHOLDER_IDS:
                issuer = str(header.get("IssuerOfPatientID", "") or "").strip()
                shift = fresh_shift() if options.retain_dates else 0
                names.patient, names.shift_days = deid.patient(
                    self.engine, f"{issuer}\\{patient_id}", names.patient, shift
                )
        return names

    def _record(
        self, job_id: int, answer: Answer, archive: Path, target: Target, unreachable: set[str]
    ) -> None:
        if self.stopping.is_set() and answer.outcome is Outcome.RETRY and answer.reached:
            # Cut by the stop. The job stays `submitting`: the next start sends it again
            # if its last bytes had not gone, else fails it (never sent twice on its own).
            return
        if answer.outcome is Outcome.DONE:
            logger.info("job %d: %s accepted it as task %s", job_id, target.server, answer.task_uid)
            jobs.move(
                self.engine, job_id, JobState.SUBMITTED, f"accepted as task {answer.task_uid}",
                self.clock(), source=jobs.SUBMITTING, task_uid=answer.task_uid, last_error="",
                submitted_at=self.clock(),
            )  # fmt: skip
            self.on_submitted(job_id)
            _discard(archive)
        elif answer.outcome is Outcome.RETRY:
            if not answer.reached or answer.cut:
                unreachable.add(target.server)
            _discard(archive)
            if answer.maybe_held:
                self._warn_possible_orphan(job_id, target)
            failure = SubmitFailure(answer.detail, answer.suspect_model, answer.maybe_held)
            self._retry(job_id, failure, target.model)
        else:
            self._fail(job_id, answer.detail)

    def remove_files(self) -> None:
        """Remove the files of series a person had deleted and, with DELETE_ON_POST, of
        those that are unmatched or fully submitted."""
        ready = jobs.series_ready_for_removal(
            self.engine, delete_on_post=self.settings.delete_on_post
        )
        for series_id in ready:
            what = f"post daemon: removing the files of series {series_id}"
            guarded(logger, what, self._remove_series, series_id)

    def _remove_series(self, series_id: int) -> None:
        if self.before_removal is not None:
            self.before_removal(series_id)
        # Under the tree lock: the Store SCP cannot rename a resent instance into one of
        # these paths, or create a folder being pruned, between the check and the unlink.
        with self.tree_lock.exclusive():
            paths = jobs.removable_paths(self.engine, series_id)
            for relative in paths:
                _remove(self.settings.incoming_dir, relative)
            jobs.mark_files_removed(self.engine, series_id, self.clock())
        logger.info("series %d: removed its %d file(s)", series_id, len(paths))

    def _member(self, instance: InstanceView, series: jobs.JobSeries) -> Member:
        return Member(
            path=self.settings.incoming_dir / instance.path,
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            series_instance_uid=series.series_instance_uid,
            trigger=series.trigger,
        )

    def _retry(self, job_id: int, failure: SubmitFailure, model: str = "") -> None:
        settings = self.settings

        def decide(counts: SubmitCounts, failure: SubmitFailure) -> RetryDecision:
            return submit_retry(counts, failure, settings, model)

        jobs.retry_later(self.engine, job_id, failure, self.clock(), decide)

    def _warn_possible_orphan(self, job_id: int, target: Target) -> None:
        logger.warning(
            "job %d: no answer from %s after the whole archive was sent: the server may hold "
            "a task from it (model %s) that will run unseen and never be deleted; if it "
            "does, ask the server's administrator to delete it (the job's timeline has the "
            "time). The job is sent again at most %d time(s) in all after such submits",
            job_id, target.server, target.model, self.settings.ambiguous_resends,
        )  # fmt: skip

    def _fail(self, job_id: int, reason: str) -> None:
        jobs.move(
            self.engine, job_id, JobState.FAILED, reason, self.clock(), source=jobs.IN_HAND,
            last_error=reason, failed_step=Step.SUBMIT,
        )  # fmt: skip


@dataclass(frozen=True)
class Submit:
    """A job handed to a lane: with a pool, the member chosen for it and why."""

    job_id: int
    member: Server | None = None
    reason: str = ""


def _kind(reason: str) -> str:
    """A waiting reason without its counts: what changes it enough to be written again."""
    return re.sub(r"\d+", "#", reason)


def _plus_one(member: PoolMember) -> PoolMember:
    return replace(member, in_flight=member.in_flight + 1, recent=member.recent + 1)


def _discard(archive: Path) -> None:
    with contextlib.suppress(OSError):
        archive.unlink(missing_ok=True)
        archive.parent.rmdir()


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
