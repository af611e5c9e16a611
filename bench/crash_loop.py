"""Crash loop: the whole relay loop, with `isdr serve` killed (SIGKILL) at chosen moments.

    .venv/bin/python -m bench.crash_loop --rounds 100 [--seed S] [--json PATH]

dcmtk storescu -> `isdr serve` (a subprocess on a SQLite DATA_DIR) -> the stand-in
InferenceServer (HTTPS, a thread of this process) -> two dcmtk storescp destinations. The
stand-in and the destinations run throughout; only the relay dies.

Each round sends one or two fresh synthetic series (CT to an API 1 model, MR to an API 2
model, both fingerprints with the two destinations) and aims a SIGKILL at one phase of the
pipeline: receipt, matching (the quiet wait and routing), archive (building it), submit,
poll, download (and unpacking), delivery, or start-up (a second kill while the relay
recovers from the first). It waits for that phase to begin (from the relay's database, its
job folder, its log and the stand-in), adds a random delay, kills, reads where the round's
first series really was (the phase the kill landed in), starts the relay again and resends
every instance that got no Success, as a PACS would. Rounds do not wait for earlier jobs,
so those are cut wherever they happen to be.

At the end everything settles (bounded), the relay is stopped with SIGTERM, and
`bench.crash_checks.judge` checks the facts: every instance that got Success in exactly
one accepted archive, every prediction at every destination, every job delivered (or
failed with the one tolerated reason), one job per round. The figures are printed, and
written as JSON with --json. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

import isdr
from bench.crash_checks import (
    AMBIGUOUS,
    Facts,
    JobRow,
    RoundRow,
    SentInstance,
    Submission,
    Verdict,
    job_id_of,
    judge,
)
from isdr.config import Settings
from isdr.demo.standin import StandIn
from isdr.synthetic import SeriesSpec, make_instance
from tests.helpers import free_port
from tests.peers import Storescp

PHASES = (
    "receipt", "matching", "archive", "submit", "poll", "download", "delivery", "start-up",
)  # fmt: skip
AE_TITLE = "CRASH_RELAY"
MODELS = {"CT": ("ct-model", 1), "MR": ("mr-model", 2)}  # modality -> (model, API generation)
POST_AFTER = 1.0
GET_INTERVAL = 0.25
RELAY_ENV = {
    "POST_AFTER": str(POST_AFTER),
    "POST_INTERVAL": "0.2",
    "GET_INTERVAL": str(GET_INTERVAL),
    "POST_RETRY_DELAY": "0.5",
    "DELIVERY_RETRY_DELAY": "0.5",
    "MIN_FREE_DISK_MB": "0",
    "STOP_TIMEOUT": "5",
    "LOG_LEVEL": "INFO",
}
WAIT = 30.0  # the longest a round waits for its phase to begin
RESENDS = 5  # storescu runs per batch after a kill before its instances count as never sent


class HarnessError(Exception):
    """The loop cannot go on (the relay does not start again, a peer is missing)."""


@dataclass(frozen=True)
class LoopOptions:
    """How long and how hard to run."""

    rounds: int
    seed: int
    work: Path
    settle_timeout: float = 90.0
    series_per_round: tuple[int, int] = (1, 2)
    instances_per_series: tuple[int, int] = (8, 20)
    predictions: int = 6  # DICOM files in each task's output
    polls_before_ready: int = 2


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: the phase aimed at, where it landed, and how long the restart took."""

    round: int
    aimed: str
    landed: str
    detail: str
    at: float  # seconds since the loop began
    restart: float = 0.0
    late_resend: bool = False  # what got no Success was resent after its round went quiet


@dataclass
class Report:
    """What a run found: the verdict of the checks, the kills and the figures."""

    options: LoopOptions
    verdict: Verdict
    kills: list[Kill]
    figures: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)  # `isdr jobs show` of failed jobs

    def text(self) -> str:
        return render(self)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": machine(),
            "code": code_version(),
            "options": {**asdict(self.options), "work": str(self.options.work)},
            "relay_env": RELAY_ENV,
            "passed": self.verdict.passed,
            "failures": self.verdict.failures,
            "tolerated": dict(self.verdict.tolerated),
            "figures": {**self.verdict.figures, **self.figures},
            "kills": [asdict(kill) for kill in self.kills],
        }


# --- the series the harness sends ------------------------------------------------------


@dataclass
class SentSeries:
    """A synthetic series on disk, and what storescu made of each of its files."""

    uid: str
    modality: str
    files: dict[Path, str]  # file -> SOP Instance UID
    sends: Counter[Path] = field(default_factory=Counter)
    success: set[Path] = field(default_factory=set)

    def missing(self) -> list[Path]:
        return [path for path in self.files if path not in self.success]

    def sent(self) -> list[SentInstance]:
        return [
            SentInstance(uid, self.uid, self.sends[path], path in self.success)
            for path, uid in self.files.items()
        ]


def write_series(folder: Path, modality: str, count: int) -> SentSeries:
    """`count` instances of a fresh series (256x256 CT or MR, 128 kB each) as Part 10 files."""
    folder.mkdir(parents=True)
    spec = SeriesSpec(modality=modality, count=count, rows=256, columns=256)
    study_uid, series_uid = generate_uid(), generate_uid()
    files = {}
    for index in range(count):
        ds = make_instance(spec, index, study_uid, series_uid)
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[path] = str(ds.SOPInstanceUID)
    return SentSeries(series_uid, modality, files)


class Sending:
    """One storescu run in the background, its verbose output in a file."""

    def __init__(self, files: Sequence[Path], port: int, output: Path) -> None:
        self.output = output
        command = [
            "storescu", "-v", "-aet", "CRASH_PACS", "-aec", AE_TITLE,
            "-to", "5", "-ta", "5", "-td", "10", "127.0.0.1", str(port), *map(str, files),
        ]  # fmt: skip
        env = {**os.environ, "TCP_NODELAY": "1"}
        with output.open("wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, series: Sequence[SentSeries]) -> None:
        """Wait for storescu to end, then count its sends and Successes per file."""
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        attempted, succeeded = parse_storescu(self.output.read_text(errors="replace"))
        for one in series:
            for path in one.files:
                one.sends[path] += attempted[str(path)]
                if str(path) in succeeded:
                    one.success.add(path)


def parse_storescu(text: str) -> tuple[Counter[str], set[str]]:
    """From `storescu -v` output: how often each file was sent, and which got Success."""
    attempted: Counter[str] = Counter()
    succeeded: set[str] = set()
    current = ""
    for line in text.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
            attempted[current] += 1
        elif "Received Store Response (Success" in line and current:
            succeeded.add(current)
    return attempted, succeeded


# --- the relay and what it has recorded -------------------------------------------------


class RelayProcess:
    """`isdr serve` as a subprocess: started, killed, started again; one log for all."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> float:
        """Start the relay and wait for its C-ECHO; the seconds it took."""
        began = time.monotonic()
        self.spawn()
        self._wait_for_echo(began + 60)
        return time.monotonic() - began

    def spawn(self) -> None:
        """Start the relay's process, without waiting for it to be ready."""
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"=== crash loop: start {self.starts}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "isdr", "serve"], env=self.env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def since_start(self) -> list[str]:
        """The log lines of the last start."""
        text = self.log.read_text(errors="replace")
        return text[text.rfind("=== crash loop: start") :].splitlines()[1:]

    def running(self) -> bool:
        """Whether the last start got as far as 'relay running' (its start-up is over)."""
        return any("relay running" in line for line in self.since_start())

    def _wait_for_echo(self, deadline: float) -> None:
        echo = ["echoscu", "-aec", AE_TITLE, "-to", "2", "127.0.0.1", str(self.port)]
        while subprocess.run(echo, capture_output=True, check=False).returncode != 0:
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(f"the relay did not start again:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        with self.log.open("ab") as out:
            out.write(b"=== crash loop: SIGKILL\n")

    def stop(self) -> int | None:
        """SIGTERM; the exit status (None if it had to be killed)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Database:
    """The relay's SQLite database, read (only) by the harness while the relay runs."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, timeout=30, isolation_level=None)

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, args).fetchall()

    def count(self, sql: str, *args: object) -> int:
        return int(self.rows(sql, *args)[0][0])

    def recorded(self, series_uids: Sequence[str]) -> int:
        marks = ",".join("?" * len(series_uids))
        return self.count(
            "SELECT count(*) FROM instance i JOIN series s ON s.id = i.series_id "
            f"WHERE s.series_instance_uid IN ({marks})",
            *series_uids,
        )

    def first_job(self, series_uid: str) -> tuple[int, str, bool] | None:
        """(id, state, whether its archive was wholly sent) of the series' first job."""
        found = self.rows(
            "SELECT j.id, j.state, j.archive_sent_at IS NOT NULL FROM job j "
            "JOIN series s ON s.id = j.series_id WHERE s.series_instance_uid = ? "
            "ORDER BY j.id LIMIT 1",
            series_uid,
        )
        return (int(found[0][0]), str(found[0][1]), bool(found[0][2])) if found else None

    def confirmed(self, job_id: int) -> int:
        return self.count(
            "SELECT count(*) FROM delivered_file f JOIN delivery d ON d.id = f.delivery_id "
            "WHERE d.job_id = ?",
            job_id,
        )

    def deliveries_done(self, job_id: int) -> bool:
        states = [
            row[0] for row in self.rows("SELECT state FROM delivery WHERE job_id = ?", job_id)
        ]
        return bool(states) and all(state == "delivered" for state in states)

    def settled(self, series_uids: set[str]) -> bool:
        """Nothing open: no round receiving, every job ended, every series routed."""
        if self.count("SELECT count(*) FROM series WHERE state = 'receiving'"):
            return False
        if self.count("SELECT count(*) FROM job WHERE state NOT IN ('delivered', 'failed')"):
            return False
        if self.remote_deletes_due():
            return False
        routed = {r[0] for r in self.rows("SELECT series_instance_uid FROM series")}
        return series_uids <= routed

    def remote_deletes_due(self) -> int:
        """Jobs whose task on the server is still to be deleted (0 before such a queue)."""
        columns = {row[1] for row in self.rows("PRAGMA table_info(job)")}
        if "remote_delete_due_at" not in columns:
            return 0
        return self.count("SELECT count(*) FROM job WHERE remote_delete_due_at IS NOT NULL")

    def close(self) -> None:
        self.connection.close()


# --- where a kill landed ------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Where the round's first series stood when the relay died."""

    sending: bool  # the round's series were still arriving: some got no Success
    job_state: str | None  # its first job's state; None: no job yet
    archive_begun: bool  # the job's folder exists: its archive is being (or was) built
    archive_sent: bool  # the job recorded that its whole archive had gone
    server_has_it: bool  # the stand-in accepted the job's archive
    output_served: bool  # the stand-in answered a poll of its task with the output
    deliveries_done: bool  # every destination confirmed every file


def classify(snap: Snapshot) -> tuple[str, str]:
    """The phase a kill landed in, and a detail for the submit phase."""
    if snap.sending:
        return "receipt", ""
    if snap.job_state is None:
        return "matching", "quiet wait"
    if snap.job_state == "pending":
        return ("archive", "") if snap.archive_begun else ("matching", "routed")
    if snap.job_state == "submitting":
        if snap.server_has_it:
            return "submit", "the server had it"
        return "submit", "whole archive sent" if snap.archive_sent else "archive on the wire"
    if snap.job_state == "submitted":
        return ("download", "") if snap.output_served else ("poll", "")
    if snap.job_state == "delivering":
        return ("finishing", "") if snap.deliveries_done else ("delivery", "")
    return "after", snap.job_state


# --- the loop -----------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, step: float = 0.001) -> bool:
    """Whether `condition` came true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class CrashLoop:
    """The peers, the relay, and the rounds of kills."""

    def __init__(self, options: LoopOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        work = options.work
        for folder in ("series", "sends"):
            (work / folder).mkdir(parents=True, exist_ok=True)
        self.standin = StandIn(work)
        self.standin.output_count = options.predictions
        self.standin.polls_before_ready = options.polls_before_ready
        self.destinations = [
            Storescp(work / f"dest-{name}", ae_title=f"DEST_{name}", options=("+uf",))
            for name in ("A", "B")
        ]
        self.port = free_port()
        self.relay = RelayProcess(
            relay_env(work, self.port, self.standin), self.port, work / "relay.log"
        )
        self.jobs_dir = work / "data" / "jobs"
        self.series: list[SentSeries] = []
        self.kills: list[Kill] = []
        self.began = time.monotonic()
        self.db: Database | None = None

    def run(self) -> Report:
        self.standin.start()
        for destination in self.destinations:
            destination.start()
        try:
            return self._run()
        finally:
            self.relay.stop()
            for destination in self.destinations:
                destination.stop()
            self.standin.stop()
            if self.db is not None:
                self.db.close()

    def _run(self) -> Report:
        write_fingerprints(self.options.work / "fingerprints", self.standin, self.destinations)
        self.relay.start()
        self.db = Database(self.options.work / "data" / "isdr.sqlite3")
        self.began = time.monotonic()
        for number, aimed in enumerate(self._aims()):
            self.kills += self._round(number + 1, aimed)
        sent_at = time.monotonic()
        settled = wait_until(
            lambda: self._database().settled({s.uid for s in self.series}),
            timeout=self.options.settle_timeout,
            step=0.2,
        )
        settle = time.monotonic() - sent_at
        status = self.relay.stop()
        return self._report(settled, settle, status)

    def _database(self) -> Database:
        assert self.db is not None
        return self.db

    def _aims(self) -> list[str]:
        """The phases aimed at: every phase once per block of len(PHASES) rounds, shuffled."""
        aims: list[str] = []
        while len(aims) < self.options.rounds:
            block = list(PHASES)
            self.rng.shuffle(block)
            aims += block
        return aims[: self.options.rounds]

    def _round(self, number: int, aimed: str) -> list[Kill]:
        batch = self._new_batch(number)
        sending = Sending(
            [p for s in batch for p in s.files], self.port, self._sends_file(number, 0)
        )
        self._aim(aimed, batch, sending)
        kills = [self._kill(number, "anywhere" if aimed == "start-up" else aimed, batch, sending)]
        if aimed == "start-up":
            kills.append(self._kill_during_start_up(number, batch))
        restart = self.relay.start()
        late = kills[0].landed == "receipt" and self.rng.random() < 0.3
        if late:
            time.sleep(POST_AFTER + 0.5)  # a PACS that resends later: its round went quiet
        self._resend(number, batch)
        for one in batch:
            shutil.rmtree(next(iter(one.files)).parent)  # every file has had its Success
        kills[-1] = replace(kills[-1], restart=round(restart, 3), late_resend=late)
        return kills

    def _kill(
        self, number: int, aimed: str, batch: list[SentSeries], sending: Sending | None
    ) -> Kill:
        """SIGKILL now; where it landed (`sending`: the round's storescu, still to count)."""
        self.relay.kill()
        at = time.monotonic() - self.began
        snapshot = self._snapshot(batch[0])
        cut = False
        if sending is not None:
            sending.finish(batch)
            cut = any(one.missing() for one in batch)  # only a kill keeps a Success back
        landed, detail = classify(replace(snapshot, sending=cut))
        return Kill(number, aimed, landed, detail, round(at, 3))

    def _kill_during_start_up(self, number: int, batch: list[SentSeries]) -> Kill:
        """Start the relay and kill it again while it starts: once its first line is logged
        (after the imports), within the ~20 ms in which it reconciles the tree, loads the
        fingerprints, settles interrupted submits and deliveries and opens the Store SCP."""
        self.relay.spawn()
        wait_until(lambda: bool(self.relay.since_start()), step=0.0005)
        time.sleep(self.rng.uniform(0, 0.03))
        if self.relay.running():
            return self._kill(number, "start-up", batch, None)
        self.relay.kill()
        lines = [line for line in self.relay.since_start() if not line.startswith("===")]
        last = lines[-1].split()[3].rstrip(":") if lines and len(lines[-1].split()) > 3 else ""
        at = round(time.monotonic() - self.began, 3)
        return Kill(number, "start-up", "start-up", f"after {last or 'nothing'}", at)

    def _new_batch(self, number: int) -> list[SentSeries]:
        low, high = self.options.series_per_round
        count_low, count_high = self.options.instances_per_series
        batch = []
        for index in range(self.rng.randint(low, high)):
            folder = self.options.work / "series" / f"{number:03d}-{index}"
            modality = self.rng.choice(sorted(MODELS))
            batch.append(write_series(folder, modality, self.rng.randint(count_low, count_high)))
        self.series += batch
        return batch

    def _sends_file(self, number: int, attempt: int) -> Path:
        return self.options.work / "sends" / f"{number:03d}-{attempt}.txt"

    def _resend(self, number: int, batch: list[SentSeries]) -> None:
        """What got no Success goes again (a PACS resends), until all has it."""
        for attempt in range(1, RESENDS + 1):
            missing = [path for one in batch for path in one.missing()]
            if not missing:
                return
            sending = Sending(missing, self.port, self._sends_file(number, attempt))
            sending.finish(batch)

    # --- aiming: wait for the phase to begin, then a random moment within it ---

    def _aim(self, aimed: str, batch: list[SentSeries], sending: Sending) -> None:
        aims: dict[str, Callable[[list[SentSeries], Sending], None]] = {
            "receipt": self._aim_receipt,
            "matching": self._aim_matching,
            "archive": self._aim_archive,
            "submit": self._aim_submit,
            "poll": self._aim_poll,
            "download": self._aim_download,
            "delivery": self._aim_delivery,
            "start-up": self._aim_start_up,
        }
        aims[aimed](batch, sending)

    def _aim_receipt(self, batch: list[SentSeries], sending: Sending) -> None:
        total = sum(len(s.files) for s in batch)
        enough = self.rng.randint(1, max(1, total - 1))
        uids = [s.uid for s in batch]
        wait_until(lambda: not sending.running() or self._database().recorded(uids) >= enough)

    def _aim_matching(self, batch: list[SentSeries], sending: Sending) -> None:
        wait_until(lambda: not sending.running(), step=0.01)
        time.sleep(self.rng.uniform(0, POST_AFTER))

    def _aim_archive(self, batch: list[SentSeries], sending: Sending) -> None:
        job_id = self._first_job(batch[0])
        wait_until(
            lambda: (self.jobs_dir / str(job_id)).exists() or self._state(batch[0]) != "pending",
            step=0.0005,
        )
        time.sleep(self.rng.uniform(0, 0.004))

    def _aim_submit(self, batch: list[SentSeries], sending: Sending) -> None:
        self._first_job(batch[0])
        wait_until(lambda: self._state(batch[0]) != "pending", step=0.0005)
        time.sleep(self.rng.uniform(0, self.rng.choice((0.005, 0.03))))  # on the wire, or after

    def _aim_poll(self, batch: list[SentSeries], sending: Sending) -> None:
        self._first_job(batch[0])
        wait_until(lambda: self._state(batch[0]) not in ("pending", "submitting"), step=0.005)
        time.sleep(self.rng.uniform(0, GET_INTERVAL * self.options.polls_before_ready))

    def _aim_download(self, batch: list[SentSeries], sending: Sending) -> None:
        job_id = self._first_job(batch[0])
        wait_until(
            lambda: (
                self._output_served(job_id)
                or self._state(batch[0]) in ("delivering", "delivered", "failed")
            ),
        )
        time.sleep(self.rng.uniform(0, 0.01))

    def _aim_delivery(self, batch: list[SentSeries], sending: Sending) -> None:
        job_id = self._first_job(batch[0])
        enough = self.rng.randint(0, 2 * self.options.predictions - 1)
        wait_until(lambda: self._state(batch[0]) in ("delivering", "delivered", "failed"))
        wait_until(
            lambda: (
                self._database().confirmed(job_id) >= enough
                or self._state(batch[0]) != "delivering"
            ),
        )
        time.sleep(self.rng.uniform(0, 0.005))

    def _aim_start_up(self, batch: list[SentSeries], sending: Sending) -> None:
        """A first kill anywhere after the series arrived; the second comes in start-up."""
        wait_until(lambda: not sending.running(), step=0.01)
        time.sleep(self.rng.uniform(0, 2.0))

    def _first_job(self, series: SentSeries) -> int:
        """The series' first job, once routing has made it (0 if it never came)."""
        wait_until(lambda: self._database().first_job(series.uid) is not None, step=0.002)
        found = self._database().first_job(series.uid)
        return found[0] if found else 0

    def _state(self, series: SentSeries) -> str:
        found = self._database().first_job(series.uid)
        return found[1] if found else "none"

    def _output_served(self, job_id: int) -> bool:
        with self.standin.lock:
            for submission in self.standin.submissions:
                if job_id_of(submission.filename) == job_id:
                    return bool(self.standin.tasks[submission.uid].instance_uids)
        return False

    def _server_has(self, job_id: int) -> bool:
        with self.standin.lock:
            return any(job_id_of(s.filename) == job_id for s in self.standin.submissions)

    def _snapshot(self, series: SentSeries) -> Snapshot:
        found = self._database().first_job(series.uid)
        job_id, state, sent = found if found else (0, None, False)
        return Snapshot(
            sending=False,
            job_state=state,
            archive_begun=bool(job_id) and (self.jobs_dir / str(job_id)).exists(),
            archive_sent=sent,
            server_has_it=bool(job_id) and self._server_has(job_id),
            output_served=bool(job_id) and self._output_served(job_id),
            deliveries_done=bool(job_id) and self._database().deliveries_done(job_id),
        )

    # --- the end ---

    def _report(self, settled: bool, settle: float, status: int | None) -> Report:
        verdict = judge(self._facts())
        if not settled:
            verdict.failures.append(
                f"not settled within {self.options.settle_timeout:.0f} s (see the jobs above)"
            )
        if status != 0:
            verdict.failures.append(f"the relay exited with {status} on SIGTERM")
        restarts = [kill.restart for kill in self.kills]
        report = Report(self.options, verdict, self.kills)
        report.figures = {
            "rounds": self.options.rounds,
            "kills": len(self.kills),
            "kills_aimed": dict(Counter(kill.aimed for kill in self.kills)),
            "kills_landed": dict(Counter(kill.landed for kill in self.kills)),
            "kills_submit_detail": _details(self.kills, "submit"),
            "kills_start_up_detail": _details(self.kills, "start-up"),
            "late_resends": sum(kill.late_resend for kill in self.kills),
            "restart_s_median": round(statistics.median(restarts), 2) if restarts else 0,
            "restart_s_max": round(max(restarts), 2) if restarts else 0,
            "settle_s": round(settle, 1),
            "duration_s": round(time.monotonic() - self.began, 1),
            "submit_s": self._submit_durations(),
        }
        report.evidence = self._evidence(verdict)
        return report

    def _facts(self) -> Facts:
        return Facts(
            instances=[instance for one in self.series for instance in one.sent()],
            submissions=self._submissions(),
            jobs=self._jobs(),
            rounds=self._rounds(),
            destinations={d.ae_title: received(d.folder) for d in self.destinations},
            log_errors=log_errors(self.relay.log),
        )

    def _submissions(self) -> list[Submission]:
        with self.standin.lock:
            return [
                Submission(
                    job_id_of(s.filename),
                    s.uid,
                    frozenset(PurePosixPath(m).name.removesuffix(".dcm") for m in s.members),
                    tuple(self.standin.tasks[s.uid].instance_uids),
                    self.standin.tasks[s.uid].deleted,
                )
                for s in self.standin.submissions
            ]

    def _jobs(self) -> list[JobRow]:
        db = self._database()
        instances: dict[int, set[str]] = {}
        for series_id, uid in db.rows("SELECT series_id, sop_instance_uid FROM instance"):
            instances.setdefault(series_id, set()).add(uid)
        rows = db.rows(
            "SELECT j.id, j.series_id, s.series_instance_uid, s.round, j.fingerprint_name, "
            "j.state, j.last_error, j.task_uid FROM job j JOIN series s ON s.id = j.series_id "
            "ORDER BY j.id"
        )
        return [_job_row(row, frozenset(instances.get(row[1], ()))) for row in rows]

    def _rounds(self) -> list[RoundRow]:
        rows = self._database().rows("SELECT id, series_instance_uid, round, state FROM series")
        return [RoundRow(*row) for row in rows]

    def _submit_durations(self) -> dict[str, float]:
        """Seconds from 'submitting' to the next state, over every job: the submit window."""
        rows = self._database().rows("SELECT job_id, at, state FROM job_event ORDER BY id")
        began: dict[int, str] = {}
        spans = []
        for job_id, at, state in rows:
            if state == "submitting":
                began[job_id] = at
            elif job_id in began:
                spans.append(_seconds(began.pop(job_id), at))
        if not spans:
            return {}
        return {"median": round(statistics.median(spans), 3), "max": round(max(spans), 3)}

    def _evidence(self, verdict: Verdict) -> list[str]:
        """`isdr jobs show` of each job a failure names (at most five)."""
        named = sorted({int(w) for f in verdict.failures for w in _job_ids(f)})[:5]
        shown = []
        for job_id in named:
            result = subprocess.run(
                [sys.executable, "-m", "isdr", "jobs", "show", str(job_id)],
                env=self.relay.env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            shown.append(result.stdout + result.stderr)
        return shown


def _details(kills: list[Kill], phase: str) -> dict[str, int]:
    return dict(Counter(kill.detail for kill in kills if kill.landed == phase))


def _job_row(row: tuple[Any, ...], instance_uids: frozenset[str]) -> JobRow:
    job_id, series_id, series_uid, round_, fingerprint, state, last_error, task_uid = row
    return JobRow(
        job_id, series_id, series_uid, round_, fingerprint, state, last_error, task_uid,
        instance_uids,
    )  # fmt: skip


def _job_ids(failure: str) -> list[str]:
    words = failure.replace(",", " ").replace(":", " ").split()
    return [b for a, b in itertools.pairwise(words) if a == "job" and b.isdigit()]


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def relay_env(work: Path, port: int, standin: StandIn) -> dict[str, str]:
    """The relay's environment: ours, with no relay variable inherited from the caller's."""
    inherited = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    return {
        **inherited,
        **RELAY_ENV,
        "SCP_HOSTNAME": "127.0.0.1",
        "SCP_PORT": str(port),
        "HTTP_PORT": "0",
        "SCP_AE_TITLE": AE_TITLE,
        "DATA_DIR": str(work / "data"),
        "INCOMING_DIR": str(work / "incoming"),
        "FINGERPRINT_DIR": str(work / "fingerprints"),
        "CERT_FILE": str(standin.ca_file),
    }


def write_fingerprints(folder: Path, standin: StandIn, destinations: list[Storescp]) -> None:
    """CT to an API 1 model, MR to an API 2 model; both deliver to every destination."""
    folder.mkdir(parents=True, exist_ok=True)
    scus = [
        {"scu_ip": "127.0.0.1", "scu_port": d.port, "scu_ae_title": d.ae_title}
        for d in destinations
    ]
    for modality, (model, api) in MODELS.items():
        fields = {
            "modality_regex": f"^{modality}$",
            "inference_server_url": standin.url_v1 if api == 1 else standin.url_v2,
            "inference_server_api": api,
            "model_human_readable_id": model,
            "scus": scus,
        }
        (folder / f"{modality.lower()}.json").write_text(json.dumps(fields))


def received(folder: Path) -> Counter[str]:
    """SOP Instance UID -> copies, over the files a storescp wrote (one per C-STORE)."""
    found: Counter[str] = Counter()
    for path in sorted(folder.iterdir()):
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        found[str(ds.SOPInstanceUID)] += 1
    return found


def log_errors(log: Path) -> list[str]:
    """The relay's ERROR lines, except the tolerated ambiguous submit."""
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if " ERROR " in line and AMBIGUOUS not in line
    ]


def code_version() -> str:
    """The commit of this checkout, and which `isdr` the relay ran (PYTHONPATH may point
    at a copy of the tree)."""
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return (
        f"checkout {commit.stdout.strip() or '?'}; isdr imported from {Path(isdr.__file__).parent}"
    )


def machine() -> str:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("pynetdicom", "httpx"))
    dcmtk = subprocess.run(["storescu", "--version"], capture_output=True, text=True, check=False)
    found = re.search(r" v(\S+)", dcmtk.stdout)
    dcmtk_version = found.group(1) if found else "?"
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, dcmtk {dcmtk_version}, "
        f"{versions}"
    )


# --- output ---------------------------------------------------------------------------------


def render(report: Report) -> str:
    """The figures, then the checks, as a person reads them."""
    f = {**report.verdict.figures, **report.figures}
    lines = [
        f"--- crash loop: {f['rounds']} rounds, {f['kills']} kills, seed {report.options.seed}, "
        f"{f['duration_s']} s (settled {f['settle_s']} s after the last round)",
        "kills by phase (aimed -> landed):",
    ]
    aimed, landed = f["kills_aimed"], f["kills_landed"]
    for phase in (*PHASES, "finishing", "after", "anywhere"):
        if aimed.get(phase) or landed.get(phase):
            lines.append(f"  {phase:<10} {aimed.get(phase, 0):>4} -> {landed.get(phase, 0):>4}")
    if f["kills_submit_detail"]:
        lines.append(f"  submit kills: {_pairs(f['kills_submit_detail'])}")
    if f["kills_start_up_detail"]:
        lines.append(f"  start-up kills, last line logged: {_pairs(f['kills_start_up_detail'])}")
    lines += [
        f"restarts: {f['kills']}, median {f['restart_s_median']} s, max {f['restart_s_max']} s;"
        f" submit (submitting -> next state): {_pairs(f['submit_s'])}",
        f"instances: {f['instances_unique']} sent ({f['instances_sends']} sends, "
        f"{f['instances_resent']} resent after a kill, {f['late_resends']} time(s) after their "
        f"round went quiet), {f['instances_success']} got Success",
        f"series: {f['series']}, in {f['series_rounds']} round(s)",
        f"jobs: {f['jobs']} ({_pairs(f['jobs_by_state'])})",
    ]
    lines += [
        f"  failed: {count} x {reason}" for reason, count in f["jobs_failed_by_reason"].items()
    ]
    lines += [
        f"submissions accepted by the stand-in: {f['submissions']}; tasks left on it: "
        f"{f['tasks_left_on_server']}",
        f"predictions per destination: {_pairs(f['predictions_per_destination'])}; "
        f"duplicates (resent after a kill): {_pairs(f['duplicates_per_destination'])}",
    ]
    lines += [f"tolerated: {count} x {what}" for what, count in report.verdict.tolerated.items()]
    if report.verdict.passed:
        lines.append("checks: all passed")
    else:
        lines.append(f"checks: {len(report.verdict.failures)} FAILED")
        lines += [f"  - {failure}" for failure in report.verdict.failures[:50]]
        lines += report.evidence
    return "\n".join(lines)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items()) or "none"


def run_loop(options: LoopOptions) -> Report:
    """Run the whole crash loop and judge it."""
    return CrashLoop(options).run()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="kills (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: new)")
    parser.add_argument("--json", type=Path, help="write the report as JSON to this file")
    parser.add_argument("--work", type=Path, help="keep the run's files here (default: temp)")
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to settle at the end")
    parser.add_argument("--note", default="", help="a remark kept in the JSON (what was run)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    with tempfile.TemporaryDirectory(prefix="isdr-crash-") as temp:
        work = args.work or Path(temp)
        options = LoopOptions(args.rounds, seed, work, settle_timeout=args.settle)
        try:
            report = run_loop(options)
        except HarnessError as exc:
            print(f"crash loop stopped: {exc}", file=sys.stderr)
            return 2
    print(report.text())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"note": args.note, **report.as_json()}, indent=1) + "\n")
    return 0 if report.verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
