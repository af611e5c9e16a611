"""Flood: 8 senders at once, 50 series, 10 000 instances, a flaky server and destinations.

The InferenceServer fails a fifth of its requests and the destinations refuse now and
then. Everything must end delivered, once each, with the relay's memory flat and its log
showing the retries.

Run by hand (see bench/README.md); tests/e2e/test_flood.py runs a small flood in CI:

    .venv/bin/python bench/flood.py                               # full size, a few minutes
    .venv/bin/python -m bench.flood --series 8 --instances 320    # a quick one

- `isdr serve` runs as a subprocess on SQLite, with short timeouts and retry delays.
- The stand-in InferenceServer (src/demo/standin.py, in this process) answers a seeded
  random 20% of submits, polls and deletes with a 503 or a stall: it reads the request,
  says nothing for longer than the relay's POST_TIMEOUT, then closes the connection and
  keeps nothing (a stalled submit makes no task). Its toy model answers each series with a
  derived series of the same length.
- Two destinations (pynetdicom Store SCPs in this process) answer a seeded random 5% of
  C-STOREs with 0xA700 (out of resources).
- 8 dcmtk storescu processes send at once, each its share of the series, back to back.
- Checked at the end: every instance got Success and is in one series round; every series
  has exactly one job, delivered; the stand-in made exactly one task per series; every
  predicted instance is at every destination; no input or output DICOM file is left on
  the relay's disk; no ERROR line; the relay's log has one submit retry per submit the
  stand-in troubled, and the relay exits cleanly on SIGTERM.
- Measured: duration, throughput, retries by kind (from the log), the relay's RSS, peak
  RSS (VmHWM), threads and open files, sampled from /proc every half second, at the first
  delivered job (warm) and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from isdr.demo.standin import Flaky, StandIn
from isdr.synthetic import SeriesSpec, write_series

RESULTS = Path(__file__).resolve().parent / "results" / "flood.json"
RELAY_AE = "FLOOD_RELAY"
OUT_OF_RESOURCES = 0xA700
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.5  # seconds between looks at the relay's /proc entry
TERMINAL = ("delivered", "failed")
KEPT_VARIABLES = ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")  # the rest is dropped


@dataclass(frozen=True)
class Plan:
    """The size of the flood, the trouble dealt, and the relay's timing."""

    senders: int = 8
    series: int = 50
    instances: int = 10_000
    rows: int = 32  # 32x32 16-bit CT images: about 3 KB a file
    destinations: int = 2
    fault_rate: float = 0.2  # submits, polls and deletes answered 503 or stalled
    refuse_rate: float = 0.05  # C-STOREs the destinations answer 0xA700
    seed: int = 2026
    deadline: float = 900.0  # seconds from the first C-STORE for every job to end
    post_after: float = 3.0
    timeout: float = 2.0  # POST_TIMEOUT: the relay's read timeout of every request
    stall: float = 4.0  # how long a stalled request goes unanswered (> timeout)
    retry_delay: float = 0.5  # POST_RETRY_DELAY and DELIVERY_RETRY_DELAY (then doubling)
    max_attempts: int = 30  # POST_MAX_ATTEMPTS and DELIVERY_MAX_ATTEMPTS
    interval: float = 0.5  # POST_INTERVAL and GET_INTERVAL

    def relay_env(self, work: Path, port: int, standin: StandIn) -> dict[str, str]:
        """The relay's environment: only these variables, none from the caller's."""
        keep = {k: v for k, v in os.environ.items() if k in KEPT_VARIABLES}
        return {
            **keep,
            "SCP_PORT": str(port), "HTTP_PORT": "0", "SCP_AE_TITLE": RELAY_AE,
            "DATA_DIR": str(work / "data"),
            "INCOMING_DIR": str(work / "incoming"), "FINGERPRINT_DIR": str(work / "fingerprints"),
            "CERT_FILE": str(standin.ca_file), "MIN_FREE_DISK_MB": "0",
            "POST_AFTER": str(self.post_after), "POST_INTERVAL": str(self.interval),
            "GET_INTERVAL": str(self.interval), "POST_TIMEOUT": str(self.timeout),
            "POST_RETRY_DELAY": str(self.retry_delay),
            "POST_MAX_ATTEMPTS": str(self.max_attempts),
            # A stalled submit keeps nothing here, so sending it again is harmless; the relay
            # cannot know that and counts each as a possible orphan (logged at WARNING).
            "POST_AMBIGUOUS_RESENDS": str(self.max_attempts),
            "DELIVERY_RETRY_DELAY": str(self.retry_delay),
            "DELIVERY_MAX_ATTEMPTS": str(self.max_attempts), "DELIVERY_TIMEOUT": "10",
            "GET_TIMEOUT": "3600", "LOG_LEVEL": "INFO",
        }  # fmt: skip


@dataclass(frozen=True)
class SeriesSent:
    """One series of the flood: its UID, who sends it and how many instances it has."""

    uid: str
    sender: int
    count: int
    files: tuple[Path, ...]


def series_sizes(total: int, count: int, rng: random.Random) -> list[int]:
    """`count` sizes between about half and one and a half of the mean, adding to `total`."""
    weights = [rng.uniform(0.5, 1.5) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    for index in range(total - sum(sizes)):
        sizes[index % count] += 1
    return sizes


def write_flood(folder: Path, plan: Plan) -> list[SeriesSent]:
    """The synthetic series, each in its own folder; series n goes with sender n % senders.
    Even series are described "Flood A" (routed to API 1), odd ones "Flood B" (API 2)."""
    sizes = series_sizes(plan.instances, plan.series, random.Random(plan.seed))
    studies = [str(generate_uid()) for _ in range(plan.senders)]
    made = []
    for number, size in enumerate(sizes):
        sender, uid = number % plan.senders, str(generate_uid())
        spec = SeriesSpec(
            count=size, rows=plan.rows, columns=plan.rows, patient_id=f"FLOOD-{sender:02d}",
            series_description=f"Flood {'AB'[number % 2]} {number}",
            study_instance_uid=studies[sender], series_instance_uid=uid,
        )  # fmt: skip
        files = write_series(folder / f"sender{sender}" / f"series{number:03d}", spec)
        made.append(SeriesSent(uid, sender, size, tuple(files)))
    return made


class Destination:
    """A Store SCP that counts what it stores and refuses a seeded share with 0xA700."""

    def __init__(self, ae_title: str, refuse_rate: float, seed: int) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.refuse_rate = refuse_rate
        self.received: Counter[str] = Counter()  # SOP Instance UID -> times stored
        self.refused = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> Destination:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_called_aet = True
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store), (evt.EVT_CONN_OPEN, _nodelay)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=handlers)  # fmt: skip
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def scu(self) -> dict[str, Any]:
        """This destination as a fingerprint's `scus` entry."""
        return {"scu_ip": "127.0.0.1", "scu_port": self.port, "scu_ae_title": self.ae_title}

    def _store(self, event: Any) -> int:
        with self._lock:
            if self._random.random() < self.refuse_rate:
                self.refused += 1
                return OUT_OF_RESOURCES
            self.received[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_fingerprints(folder: Path, standin: StandIn, destinations: list[Destination]) -> None:
    """ "Flood A" series to a model on API 1, "Flood B" to one on API 2; both to every
    destination."""
    folder.mkdir(parents=True, exist_ok=True)
    scus = [d.scu() for d in destinations]
    for name, regex, url, api in (
        ("flood-a.json", "^Flood A", standin.url_v1, 1),
        ("flood-b.json", "^Flood B", standin.url_v2, 2),
    ):
        fingerprint = {
            "modality_regex": "^CT$", "series_description_regex": regex,
            "inference_server_url": url, "inference_server_api": api,
            "model_human_readable_id": "ct-model", "scus": scus,
        }  # fmt: skip
        (folder / name).write_text(json.dumps(fingerprint, indent=2))


@dataclass(frozen=True)
class Sample:
    """The relay process at one moment, from /proc."""

    at: float  # seconds since the flood began
    rss_mb: float  # VmRSS
    peak_mb: float  # VmHWM: the highest RSS so far
    threads: int
    open_files: int
    cpu_seconds: float  # user and system time so far


def sample(pid: int, began: float) -> Sample:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()[0] if value.split() else ""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return Sample(
        round(time.monotonic() - began, 2), round(int(status["VmRSS"]) / 1024, 1),
        round(int(status["VmHWM"]) / 1024, 1), int(status["Threads"]),
        len(os.listdir(f"/proc/{pid}/fd")), (int(stat[11]) + int(stat[12])) / CLOCK_TICKS,
    )  # fmt: skip


class Sampler(threading.Thread):
    """Samples the relay every SAMPLE_EVERY seconds until stopped."""

    def __init__(self, pid: int, began: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.began = pid, began
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY):
            try:
                self.samples.append(sample(self.pid, self.began))
            except (OSError, KeyError):
                return  # the relay is gone


def start_relay(env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "isdr", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the relay exited at start:\n{log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the relay did not listen within 30 s")


def stop_relay(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, and the exit status (None if it had to be killed after 15 s)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


@dataclass
class SenderRun:
    """One storescu: its files, exit status, seconds and what it said on failure."""

    sender: int
    files: int
    status: int = -1
    seconds: float = 0.0
    stderr: str = ""


def send_all(series: list[SeriesSent], senders: int, port: int) -> list[SenderRun]:
    """One storescu per sender, all at once, each sending its series back to back."""
    runs = [SenderRun(n, 0) for n in range(senders)]
    threads = [
        threading.Thread(target=_storescu, args=(run, series, port), daemon=True) for run in runs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return runs


def _storescu(run: SenderRun, series: list[SeriesSent], port: int) -> None:
    files = [str(path) for s in series if s.sender == run.sender for path in s.files]
    run.files = len(files)
    command = ["storescu", "-aet", f"SENDER{run.sender}", "-aec", RELAY_AE, "127.0.0.1",
               str(port), *files]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True, timeout=1800)
    run.status, run.seconds = done.returncode, round(time.monotonic() - began, 2)
    run.stderr = done.stderr[-1000:] if done.returncode else ""


def query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    """A read of the relay's SQLite database (WAL: it never waits for the relay)."""
    connection = sqlite3.connect(database, timeout=30)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def progress(database: Path) -> tuple[int, Counter[str], int]:
    """Series rounds (still receiving) and jobs (by state, and "delete due": with a remote
    delete still to make)."""
    receiving = query(database, "SELECT count(*) FROM series WHERE state = 'receiving'")[0][0]
    states = Counter(
        {s: n for s, n in query(database, "SELECT state, count(*) FROM job GROUP BY state")}
    )
    due = "SELECT count(*) FROM job WHERE remote_delete_due_at IS NOT NULL"
    return int(receiving), states, int(query(database, due)[0][0])


def wait_until_done(
    database: Path, plan: Plan, relay: subprocess.Popen[bytes], on_delivered: Callable[[], None]
) -> bool:
    """Wait until every series has a job and every job has ended; `on_delivered` is called
    once, when the first job is delivered. False at the deadline or if the relay died."""
    deadline = time.monotonic() + plan.deadline
    warm = False
    while time.monotonic() < deadline and relay.poll() is None:
        receiving, states, deletes_due = progress(database)
        if not warm and states["delivered"]:
            warm = True
            on_delivered()
        ended = sum(states[s] for s in TERMINAL)
        all_ended = ended >= plan.series and ended == sum(states.values())
        if receiving == 0 and all_ended and deletes_due == 0:
            return True
        time.sleep(0.25)
    return False


# Retries as the relay's log shows them: (kind, pattern); a line counts for the first match.
RETRY_LINES = (
    ("submit retried after 503", r"job \d+ pending: attempt \d+ failed \(server error 503"),
    ("submit retried after no answer", r"job \d+ pending: attempt \d+ failed \(no answer"),
    ("submit retried (other)", r"job \d+ pending: attempt \d+ failed"),
    ("poll outage logged", r"polling its jobs goes on every"),
    ("poll server answers again", r"InferenceServer \S+ answers again"),
    ("delivery retried after refusals", r"job \d+: \S+: attempt \d+ failed \(\d+ of \d+ file"),
    ("delivery retried (other)", r"job \d+: \S+: attempt \d+ failed"),
    ("C-STORE resent on a new association", r"opening a new association to send it again"),
    ("remote delete retried", r"remote clean-up failed \(.*; next try in"),
    ("remote delete given up", r"remote clean-up failed"),
    ("ERROR lines", r" ERROR "),
)


def count_log(text: str) -> dict[str, int]:
    """How many log lines of each kind of RETRY_LINES."""
    patterns = [(kind, re.compile(pattern)) for kind, pattern in RETRY_LINES]
    counts = dict.fromkeys((kind for kind, _ in RETRY_LINES), 0)
    for line in text.splitlines():
        for kind, pattern in patterns:
            if pattern.search(line):
                counts[kind] += 1
                break
    return counts


@dataclass
class Result:
    """What the flood did, what it measured, and what went wrong (`problems`)."""

    plan: dict[str, Any]
    instances_sent: int = 0
    series_sent: int = 0
    predictions: int = 0  # predicted instances, each to every destination
    seconds_to_receive: float = 0.0  # from the first storescu's start to the last's exit
    seconds_to_deliver: float = 0.0  # ... to the last job ended
    instances_per_second_received: float = 0.0
    instances_per_second_end_to_end: float = 0.0
    jobs: dict[str, int] = field(default_factory=dict)
    submissions: int = 0
    faults_injected: dict[str, int] = field(default_factory=dict)
    requests_to_server: dict[str, int] = field(default_factory=dict)
    refused_by_destinations: int = 0
    duplicates_at_destinations: int = 0
    tasks_left_on_server: int = 0
    submit_attempts_max: int = 0
    delivery_attempts_max: int = 0
    log: dict[str, int] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    relay_exit: int | None = None
    problems: list[str] = field(default_factory=list)


def run_flood(plan: Plan, work: Path, say: Callable[[str], None] = print) -> Result:
    """Run one flood in `work`; the Result lists every problem found (none: a pass)."""
    result = Result(asdict(plan))
    say(f"writing {plan.instances} instances in {plan.series} series ...")
    series = write_flood(work / "send", plan)
    result.instances_sent, result.series_sent = sum(s.count for s in series), len(series)
    standin = StandIn(work, models=("ct-model",)).start()
    standin.output_per_input = True
    standin.hang_seconds = plan.stall
    destinations = [
        Destination(f"FLOOD_DEST{n}", plan.refuse_rate, plan.seed + n).start()
        for n in range(plan.destinations)
    ]
    try:
        _flood(plan, work, series, standin, destinations, result, say)
    finally:
        for destination in destinations:
            destination.stop()
        standin.stop()
    return result


def _flood(
    plan: Plan,
    work: Path,
    series: list[SeriesSent],
    standin: StandIn,
    destinations: list[Destination],
    result: Result,
    say: Callable[[str], None],
) -> None:
    write_fingerprints(work / "fingerprints", standin, destinations)
    port, log, database = free_port(), work / "relay.log", work / "data" / "isdr.sqlite3"
    relay = start_relay(plan.relay_env(work, port, standin), log, port)
    standin.flaky = Flaky(plan.fault_rate, plan.seed)
    try:
        time.sleep(1.0)  # fingerprints loaded, the daemons idle
        began = time.monotonic()
        idle = sample(relay.pid, began)
        sampler = Sampler(relay.pid, began)
        sampler.start()
        warm: list[Sample] = []
        say(f"relay up ({idle.rss_mb:.0f} MB); {plan.senders} storescu sending ...")
        runs = send_all(series, plan.senders, port)
        result.seconds_to_receive = round(time.monotonic() - began, 2)
        say(f"all sent in {result.seconds_to_receive:.1f} s; waiting for the deliveries ...")
        done = wait_until_done(database, plan, relay,
                               lambda: warm.append(sample(relay.pid, began)))  # fmt: skip
        result.seconds_to_deliver = round(time.monotonic() - began, 2)
        time.sleep(2 * plan.interval + 1.0)  # settled: the last clean-ups and deletes
        alive = relay.poll() is None
        sampler.done.set()
        end = sample(relay.pid, began) if alive else (sampler.samples or [idle])[-1]
        result.memory = memory_figures(idle, warm, end, sampler.samples)
    finally:
        result.relay_exit = stop_relay(relay)
    _figures(result, standin, destinations, database, log)
    _check(result, plan, series, runs, standin, destinations, database, work, done, alive)


def memory_figures(
    idle: Sample, warm: list[Sample], end: Sample, samples: list[Sample]
) -> dict[str, Any]:
    """RSS and peak RSS when idle, at the first delivered job, and at the end; the highest
    RSS sampled in each half of the run; threads and open files."""
    half = end.at / 2
    first = [s.rss_mb for s in samples if s.at <= half] or [idle.rss_mb]
    second = [s.rss_mb for s in samples if s.at > half] or [end.rss_mb]
    at_warm = warm[0] if warm else idle
    return {
        "idle": asdict(idle),
        "warm": asdict(at_warm),
        "end": asdict(end),
        "rss_max_first_half_mb": round(max(first), 1),
        "rss_max_second_half_mb": round(max(second), 1),
        "threads_max": max((s.threads for s in samples), default=end.threads),
        "open_files_max": max((s.open_files for s in samples), default=end.open_files),
        "cpu_percent_of_one_core": round(
            100 * (end.cpu_seconds - idle.cpu_seconds) / max(end.at, 1e-9), 1
        ),
        "samples": [(s.at, round(s.rss_mb, 1)) for s in samples[:: max(1, len(samples) // 200)]],
    }


def _figures(
    result: Result,
    standin: StandIn,
    destinations: list[Destination],
    database: Path,
    log: Path,
) -> None:
    result.instances_per_second_received = round(
        result.instances_sent / max(result.seconds_to_receive, 1e-9), 1
    )
    result.instances_per_second_end_to_end = round(
        result.instances_sent / max(result.seconds_to_deliver, 1e-9), 1
    )
    result.jobs = dict(Counter(state for (state,) in query(database, "SELECT state FROM job")))
    result.submissions = len(standin.submissions)
    result.predictions = sum(len(t.instance_uids) for t in standin.tasks.values())
    flaky = standin.flaky or Flaky(0.0)
    result.faults_injected = dict(sorted(flaky.injected.items()))
    result.requests_to_server = dict(sorted(flaky.requests.items()))
    result.refused_by_destinations = sum(d.refused for d in destinations)
    result.duplicates_at_destinations = sum(
        n - 1 for d in destinations for n in d.received.values() if n > 1
    )
    result.tasks_left_on_server = sum(1 for t in standin.tasks.values() if not t.deleted)
    result.submit_attempts_max = query(database, "SELECT coalesce(max(attempts), 0) FROM job")[0][0]
    result.delivery_attempts_max = query(
        database, "SELECT coalesce(max(attempts), 0) FROM delivery"
    )[0][0]
    result.log = count_log(log.read_text(errors="replace"))


def _check(
    result: Result,
    plan: Plan,
    series: list[SeriesSent],
    runs: list[SenderRun],
    standin: StandIn,
    destinations: list[Destination],
    database: Path,
    work: Path,
    done: bool,
    alive: bool,
) -> None:
    problems = result.problems
    problems += [f"storescu {r.sender} exited {r.status}: {r.stderr}" for r in runs if r.status]
    if not alive:
        problems.append("the relay died during the flood")
    if not done:
        problems.append(f"not every job ended within {plan.deadline:.0f} s: {result.jobs}")
    problems += _check_series(series, database)
    problems += _check_tasks(standin, database)
    problems += _check_destinations(standin, destinations)
    problems += _check_disk(work)
    problems += _check_log(result)
    if result.relay_exit != 0:
        problems.append(f"the relay's exit on SIGTERM: {result.relay_exit}")


def _check_series(series: list[SeriesSent], database: Path) -> list[str]:
    """Each series: one round with every instance, one job, delivered."""
    rounds: dict[str, list[int]] = {}
    for uid, count in query(database, "SELECT series_instance_uid, instance_count FROM series"):
        rounds.setdefault(uid, []).append(count)
    jobs: dict[str, list[tuple[str, str]]] = {}
    sql = (
        "SELECT s.series_instance_uid, j.state, j.last_error "
        "FROM job j JOIN series s ON s.id = j.series_id"
    )
    for uid, state, error in query(database, sql):
        jobs.setdefault(uid, []).append((state, error))
    problems = []
    for sent in series:
        if rounds.get(sent.uid) != [sent.count]:
            problems.append(f"series {sent.uid}: {sent.count} sent, rounds {rounds.get(sent.uid)}")
        found = jobs.get(sent.uid, [])
        if [state for state, _ in found] != ["delivered"]:
            problems.append(f"series {sent.uid}: jobs {found} (one delivered job expected)")
    return problems


def _check_tasks(standin: StandIn, database: Path) -> list[str]:
    """One task per job, none the relay does not know of (no duplicate submits)."""
    known = {uid for (uid,) in query(database, "SELECT task_uid FROM job WHERE task_uid != ''")}
    orphans = set(standin.tasks) - known
    if orphans:
        return [f"{len(orphans)} task(s) on the server that no job knows (duplicate submits)"]
    left = [uid for uid, task in standin.tasks.items() if not task.deleted]
    if left:
        return [f"{len(left)} task(s) left on the server: remote deletes not made"]
    return []


def _check_destinations(standin: StandIn, destinations: list[Destination]) -> list[str]:
    problems = []
    expected = {uid for task in standin.tasks.values() for uid in task.instance_uids}
    for destination in destinations:
        missing = expected - set(destination.received)
        extra = set(destination.received) - expected
        if missing or extra:
            problems.append(
                f"{destination.ae_title}: {len(missing)} prediction(s) missing, "
                f"{len(extra)} unexpected"
            )
    return problems


def _check_disk(work: Path) -> list[str]:
    """DELETE_ON_POST removed every received file; delivered jobs kept no DICOM output."""
    left = [p for p in (work / "incoming").rglob("*.dcm")]
    left += [p for p in (work / "data" / "jobs").rglob("*.dcm")]
    return [f"{len(left)} DICOM file(s) left on the relay's disk, e.g. {left[0]}"] if left else []


def _check_log(result: Result) -> list[str]:
    problems = []
    if result.log["ERROR lines"]:
        problems.append(f"{result.log['ERROR lines']} ERROR line(s) in the relay's log")
    troubled = sum(n for kind, n in result.faults_injected.items() if kind.startswith("submit"))
    retried = sum(n for kind, n in result.log.items() if kind.startswith("submit retried"))
    if retried != troubled:
        problems.append(f"{troubled} submit(s) troubled, but {retried} retry line(s) logged")
    return problems


def report(result: Result) -> str:
    """The figures, for a person."""
    lines = [
        f"instances {result.instances_sent} in {result.series_sent} series, "
        f"{result.plan['senders']} senders; {result.predictions} predicted instances to "
        f"{result.plan['destinations']} destination(s)",
        f"received in {result.seconds_to_receive:.1f} s "
        f"({result.instances_per_second_received:.0f} instances/s); everything ended after "
        f"{result.seconds_to_deliver:.1f} s ({result.instances_per_second_end_to_end:.0f} "
        "instances/s end to end)",
        f"jobs {result.jobs}; submissions {result.submissions}; tasks left on the server "
        f"{result.tasks_left_on_server}; max attempts: submit {result.submit_attempts_max}, "
        f"delivery {result.delivery_attempts_max}",
        f"faults injected {result.faults_injected} of {result.requests_to_server} requests; "
        f"C-STOREs refused {result.refused_by_destinations}; duplicates at the destinations "
        f"{result.duplicates_at_destinations}",
        "relay log: " + ", ".join(f"{k} {v}" for k, v in result.log.items()),
        *_memory_lines(result.memory),
        "PASS" if not result.problems else "FAIL:\n  " + "\n  ".join(result.problems[:30]),
    ]
    return "\n".join(lines)


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    if not memory:
        return ["relay memory: not measured"]
    idle, warm, end = memory["idle"], memory["warm"], memory["end"]
    return [
        f"relay RSS (MB): idle {idle['rss_mb']:.0f}; at the first delivered job "
        f"({warm['at']:.0f} s) {warm['rss_mb']:.0f}, peak {warm['peak_mb']:.0f}; at the end "
        f"({end['at']:.0f} s) {end['rss_mb']:.0f}, peak {end['peak_mb']:.0f}; highest sampled "
        f"in the first/second half {memory['rss_max_first_half_mb']:.0f}/"
        f"{memory['rss_max_second_half_mb']:.0f}",
        f"relay threads {warm['threads']} -> {end['threads']} (max {memory['threads_max']}), "
        f"open files {warm['open_files']} -> {end['open_files']} (max "
        f"{memory['open_files_max']}), CPU {memory['cpu_percent_of_one_core']:.0f}% of a core",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Plan()
    for name in ("senders", "series", "instances", "destinations", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("fault_rate", "refuse_rate", "deadline"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float,
                            default=getattr(defaults, name))  # fmt: skip
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the result goes")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    opts = parser.parse_args()
    plan = Plan(
        senders=opts.senders, series=opts.series, instances=opts.instances,
        destinations=opts.destinations, seed=opts.seed, fault_rate=opts.fault_rate,
        refuse_rate=opts.refuse_rate, deadline=opts.deadline,
    )  # fmt: skip
    if opts.keep:
        opts.keep.mkdir(parents=True, exist_ok=True)
        result = run_flood(plan, opts.keep, _progress)
    else:
        with tempfile.TemporaryDirectory(prefix="isdr-flood-") as temp:
            result = run_flood(plan, Path(temp), _progress)
    print(report(result))
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps({"machine": machine(), **asdict(result)}, indent=2) + "\n")
    return 1 if result.problems else 0


def _progress(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "?",
    )  # fmt: skip
    dcmtk = subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, "
        f"{dcmtk.splitlines()[0] if dcmtk else 'dcmtk ?'}"
    )


if __name__ == "__main__":
    sys.exit(main())
