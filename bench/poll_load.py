"""Poller benchmark: 1000 pending jobs polled every GET_INTERVAL=1 s against the stand-in.

Run by hand, never as a test (see bench/README.md):

    .venv/bin/python bench/poll_load.py                # 1000 jobs, 30 s measured
    .venv/bin/python bench/poll_load.py --jobs 200 --seconds 10

The jobs are written to the relay's database as already submitted (their tasks exist in
the stand-in and stay pending), then `isdr serve` starts and polls them. After a warm-up,
the relay's thread count is sampled every second, its CPU time is read from /proc, and
the stand-in counts the polls it answered. Targets: threads bounded (they do not grow
with the number of jobs) and CPU below 25% of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy.orm import Session  # noqa: E402

from isdr.db.engine import make_engine  # noqa: E402
from isdr.db.models import Job, Series  # noqa: E402
from isdr.demo.standin import StandIn, Submission  # noqa: E402
from isdr.domain.fingerprint import Fingerprint  # noqa: E402
from isdr.domain.states import JobState, SeriesState  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(database: str, standin: StandIn, count: int) -> None:
    """`count` submitted jobs whose tasks the stand-in holds, pending forever."""
    now = datetime.now(UTC)
    snapshot = {
        "inference_server_url": standin.url_v1,
        "inference_server_api": 1,
        "model_human_readable_id": "ct-model",
        "scus": [],
    }
    engine = make_engine(database)
    with Session(engine) as session, session.begin():
        series = Series(
            series_instance_uid="1.2.3", study_instance_uid="1.2", patient_id="BENCH",
            folder="bench", first_received_at=now, last_received_at=now,
            state=SeriesState.MATCHED, files_removed_at=now,
        )  # fmt: skip
        session.add(series)
        session.flush()
        copy = Fingerprint.model_validate(snapshot)
        for index in range(count):
            uid = f"bench-task-{index}"
            standin.record(Submission(1, "ct-model", "zip_file", "x.zip", [], {}, uid))
            session.add(Job(
                series_id=series.id, fingerprint_name="bench.json", fingerprint=copy,
                state=JobState.SUBMITTED, attempts=0, next_attempt_at=now, last_error="",
                task_uid=uid, created_at=now, updated_at=now, submitted_at=now,
            ))  # fmt: skip
    engine.dispose()


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def start_relay(work: Path, standin: StandIn, interval: float) -> subprocess.Popen[bytes]:
    (work / "fingerprints").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "SCP_PORT": str(free_port()),
        "HTTP_PORT": "0",
        "DATA_DIR": str(work / "data"),
        "INCOMING_DIR": str(work / "incoming"),
        "FINGERPRINT_DIR": str(work / "fingerprints"),
        "CERT_FILE": str(standin.ca_file),
        "GET_INTERVAL": str(interval),
        "MIN_FREE_DISK_MB": "0",
        "LOG_LEVEL": "WARNING",
    }
    log = (work / "relay.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "isdr", "serve"], env=env, stdout=log,
                            stderr=log)  # fmt: skip


def measure(jobs: int, seconds: float, warmup: float, interval: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="isdr-poll-bench-") as temp:
        work = Path(temp)
        standin = StandIn(work, models=("ct-model",)).start()
        standin.outcome = "never"
        standin.v1_unknown_first = False
        seed(f"sqlite:///{work / 'data' / 'isdr.sqlite3'}", standin, jobs)
        relay = start_relay(work, standin, interval)
        try:
            time.sleep(warmup)
            if relay.poll() is not None:
                raise RuntimeError((work / "relay.log").read_text())
            gets, cpu, began = standin.gets, proc_cpu_seconds(relay.pid), time.monotonic()
            threads = []
            while time.monotonic() - began < seconds:
                threads.append(proc_threads(relay.pid))
                time.sleep(1.0)
            elapsed = time.monotonic() - began
            cpu_used = proc_cpu_seconds(relay.pid) - cpu
            polled = standin.gets - gets
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=30)
            standin.stop()
    return {
        "jobs": jobs,
        "get_interval_s": interval,
        "seconds": round(elapsed, 1),
        "polls_per_s": round(polled / elapsed, 1),
        "polls_per_job_per_interval": round(polled / elapsed * interval / jobs, 3),
        "cpu_percent_of_one_core": round(100 * cpu_used / elapsed, 1),
        "threads_max": max(threads),
        "threads_min": min(threads),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--baseline", type=int, default=10, help="jobs of the comparison run")
    opts = parser.parse_args()
    results = [
        measure(count, opts.seconds, opts.warmup, opts.interval)
        for count in (opts.baseline, opts.jobs)
    ]
    print(json.dumps(results, indent=2))
    heavy = results[-1]
    bounded = heavy["threads_max"] <= results[0]["threads_max"] + 2
    print(f"threads bounded: {bounded}; CPU below 25%: {heavy['cpu_percent_of_one_core'] < 25}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
