"""Pool choice benchmark: what choosing a pool member costs per job, alone and with the
post daemon's reads and writes around it.

Run by hand, never as a test (see bench/README.md):

    .venv/bin/python bench/pool_choice.py                  # 50 servers, 1000 jobs in flight
    .venv/bin/python bench/pool_choice.py --repeat 50 --json bench/results/pool_choice.json

A SQLite database (make_engine, in a temp dir) holds `--servers` named servers' jobs:
`--in-flight` jobs in state submitted spread over them, `--done` delivered jobs submitted
within the last two hours (what the `recent` count reads), and `--affinities` studies
held by a member. No pool_server row (every member up and not drained, as before the
first probe) unless `--status-rows`. The servers serve 4 models (every fifth serves a
second one); capacities 36 to 44, every third server of weight 2.

Each repetition is one dispatch of `--due` pool jobs (a quarter of them of a study held
already, the others of new studies, two jobs per study; a tenth narrowed to named
servers; a few whose last submit failed on some member). Timed:

1. choose: the pure choice per job as the post daemon makes it (its pool's members
   read from the state, choose(), the chosen member's load counted), no database;
2. dispatch: all of the daemon's choosing per dispatch (PostDaemon._choose): each job's
   pool from the servers file, pool.members() and pool.affinities() once, the choice per
   job, pool.remember() once. A job that would wait is counted, not written.

Both as microseconds per job (min, median, max over the repetitions, after `--warmup`
untimed ones), and the dispatch's phases in milliseconds. Target: under 1 ms per job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy  # noqa: E402
from sqlalchemy import Engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from isdr.db import pool  # noqa: E402
from isdr.db.engine import make_engine  # noqa: E402
from isdr.db.jobs import DueSubmit  # noqa: E402
from isdr.db.models import Job, PoolServer, Series, StudyAffinity  # noqa: E402
from isdr.domain.fingerprint import Fingerprint  # noqa: E402
from isdr.domain.servers import Chosen, PoolMember, Server, Servers, choose  # noqa: E402
from isdr.domain.states import JobState, SeriesState  # noqa: E402

MODELS = ("ct-seg", "mr-brain", "cxr-triage", "pet-lesion")
KEEP = timedelta(hours=1)  # AFFINITY's default: also the window of `recent`
TARGET_MS = 1.0


@dataclass(frozen=True)
class Setup:
    servers: int
    in_flight: int
    done: int
    affinities: int
    due: int
    status_rows: bool


def make_servers(count: int) -> Servers:
    """`count` servers over the models, capacities ~40, every third of weight 2."""
    servers = []
    for index in range(count):
        models = [MODELS[index % len(MODELS)]]
        if index % 5 == 0:
            models.append(MODELS[(index + 1) % len(MODELS)])
        servers.append(Server.model_validate({
            "name": f"gpu-{index:02d}", "url": f"https://gpu-{index:02d}:8000", "api": 2,
            "models": models, "capacity": 36 + index % 9,
            "weight": 2.0 if index % 3 == 0 else 1.0,
        }))  # fmt: skip
    return Servers(servers=servers)


def seed(engine: Engine, servers: Servers, setup: Setup, now: datetime) -> list[str]:
    """The jobs, the held studies and (when asked) the status rows; the held studies."""
    listed = servers.servers
    fingerprints = {m: Fingerprint.model_validate({"model_human_readable_id": m}) for m in MODELS}
    with Session(engine) as session, session.begin():
        series = [
            Series(series_instance_uid=f"1.2.{i}", study_instance_uid=f"old-{i}", patient_id="B",
                   folder="bench", first_received_at=now, last_received_at=now,
                   state=SeriesState.MATCHED)
            for i in range(200)
        ]  # fmt: skip
        session.add_all(series)
        session.flush()
        for index in range(setup.in_flight + setup.done):
            member = listed[index % len(listed)]
            flying = index < setup.in_flight
            ago = timedelta(minutes=(index * 7) % (50 if flying else 120))
            session.add(Job(
                series_id=series[index % len(series)].id, fingerprint_name="bench.json",
                fingerprint=fingerprints[member.models[0]],
                state=JobState.SUBMITTED if flying else JobState.DELIVERED,
                next_attempt_at=now, created_at=now - ago, updated_at=now,
                submitted_at=now - ago, server_name=member.name, server_copy=member,
            ))  # fmt: skip
        held = []
        for index in range(setup.affinities):
            member = listed[(index * 3) % len(listed)]
            study = f"held-{index}"
            held.append(study)
            session.add(StudyAffinity(study_instance_uid=study, model=member.models[0],
                                      server_name=member.name,
                                      expires_at=now + KEEP / 2))  # fmt: skip
        if setup.status_rows:
            for index, member in enumerate(listed):
                session.add(PoolServer(
                    name=member.name, probe_failures=0, submit_failures=0, last_error="",
                    last_probe="HTTP 200", last_probe_at=now, window_start=now,
                    window_requests=60, window_errors=0,
                    drained_at=now if index == 7 else None,
                    down_since=now if index == 11 else None,
                ))  # fmt: skip
    return held


def due_jobs(setup: Setup, servers: Servers, held: list[str], rep: int) -> list[DueSubmit]:
    """One dispatch's pool jobs: a quarter of held studies, the rest of new studies (two
    jobs each); a tenth narrowed to named servers; a few whose last submit failed."""
    listed = servers.servers
    jobs = []
    for index in range(setup.due):
        member = listed[(index * 3) % len(listed)]
        model = member.models[0]
        if index % 4 == 0 and held:
            place = (index // 4 + rep * 13) % len(held)
            study, model = held[place], listed[(place * 3) % len(listed)].models[0]
        else:
            study = f"new-{rep}-{index // 2}"
        names = None
        if index % 10 == 3:
            names = tuple(s.name for s in servers.pool(model)[:3])
        last = member.name if index % 25 == 7 else ""
        jobs.append(DueSubmit(100_000 + index, "", model, names, study, last))
    return jobs


def bump(member: PoolMember) -> PoolMember:
    """What the daemon counts once it chose a member (PostDaemon's _plus_one)."""
    return dataclasses.replace(member, in_flight=member.in_flight + 1, recent=member.recent + 1)


def choose_all(
    jobs: list[DueSubmit],
    pools: dict[int, list[Server]],
    state: dict[str, PoolMember],
    held: dict[tuple[str, str], str],
) -> tuple[list[tuple[str, str, str]], int]:
    """The choice per job as PostDaemon._choose makes it: the holds, and the waits."""
    holds, waits = [], 0
    for item in jobs:
        key = (item.study_instance_uid, item.model)
        members = [state[server.name] for server in pools[item.job_id]]
        choice = choose(members, held.get(key), avoid=item.last_server)
        if not isinstance(choice, Chosen):
            waits += 1
            continue
        state[choice.name] = bump(state[choice.name])
        held[key] = choice.name
        holds.append((*key, choice.name))
    return holds, waits


def time_choose(
    engine: Engine, servers: Servers, jobs: list[DueSubmit], now: datetime
) -> tuple[float, int]:
    """Seconds of the pure choice for a dispatch's jobs (database reads done before)."""
    pools = {item.job_id: servers.pool(item.model, item.servers) for item in jobs}
    state = pool.members(engine, servers.servers, now, KEEP)
    held = pool.affinities(engine, {(i.study_instance_uid, i.model) for i in jobs}, now)
    began = time.perf_counter()
    _holds, waits = choose_all(jobs, pools, state, held)
    return time.perf_counter() - began, waits


def time_dispatch(
    engine: Engine, servers: Servers, jobs: list[DueSubmit], now: datetime
) -> tuple[dict[str, float], int]:
    """Seconds of each phase of a dispatch's choosing, as PostDaemon._choose does it."""
    phases: dict[str, float] = {}
    began = time.perf_counter()
    pools = {item.job_id: servers.pool(item.model, item.servers) for item in jobs}
    everyone = {server.name: server for members in pools.values() for server in members}
    phases["pools"] = time.perf_counter() - began
    mark = time.perf_counter()
    state = pool.members(engine, list(everyone.values()), now, KEEP)
    phases["members"] = time.perf_counter() - mark
    mark = time.perf_counter()
    held = pool.affinities(engine, {(i.study_instance_uid, i.model) for i in jobs}, now)
    phases["affinities"] = time.perf_counter() - mark
    mark = time.perf_counter()
    holds, waits = choose_all(jobs, pools, state, held)
    phases["choose"] = time.perf_counter() - mark
    mark = time.perf_counter()
    if holds:
        pool.remember(engine, holds, now, KEEP)
    phases["remember"] = time.perf_counter() - mark
    phases["total"] = time.perf_counter() - began
    return phases, waits


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def run(setup: Setup, repeat: int, warmup: int) -> dict[str, Any]:
    servers = make_servers(setup.servers)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="isdr-pool-bench-") as temp:
        engine = make_engine(f"sqlite:///{Path(temp) / 'isdr.sqlite3'}")
        began = time.perf_counter()
        held = seed(engine, servers, setup, now)
        seeded = time.perf_counter() - began
        choose_us, dispatch_us, waits = [], [], 0
        phases: dict[str, list[float]] = {}
        for rep in range(warmup + repeat):
            jobs = due_jobs(setup, servers, held, rep)
            alone, _ = time_choose(engine, servers, jobs, now)
            # The same jobs again, as a dispatch (new studies: their holds are written).
            timed, waited = time_dispatch(engine, servers, jobs, now)
            if rep < warmup:
                continue
            waits += waited
            choose_us.append(alone * 1e6 / len(jobs))
            dispatch_us.append(timed["total"] * 1e6 / len(jobs))
            for phase, seconds in timed.items():
                phases.setdefault(phase, []).append(seconds * 1e3)
        engine.dispose()
    return {
        "setup": dataclasses.asdict(setup),
        "repeat": repeat,
        "warmup": warmup,
        "seed_seconds": round(seeded, 2),
        "choose_us_per_job": spread(choose_us),
        "dispatch_us_per_job": spread(dispatch_us),
        "dispatch_phases_ms": {phase: spread(values) for phase, values in phases.items()},
        "waits_per_dispatch": round(waits / repeat, 1),
    }


def machine() -> dict[str, str]:
    return {
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def table(results: dict[str, Any]) -> list[str]:
    lines = ["| measure | min | median | max |", "|---|---:|---:|---:|"]
    rows: list[tuple[str, dict[str, float]]] = [
        ("choose() per job (us)", results["choose_us_per_job"]),
        ("dispatch per job (us)", results["dispatch_us_per_job"]),
    ]
    rows += [(f"dispatch: {p} (ms)", s) for p, s in results["dispatch_phases_ms"].items()]
    lines += [f"| {name} | {s['min']} | {s['median']} | {s['max']} |" for name, s in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=1000, help="submitted jobs")
    parser.add_argument("--done", type=int, default=2000, help="delivered jobs of late")
    parser.add_argument("--affinities", type=int, default=300, help="studies held")
    parser.add_argument("--due", type=int, default=200, help="pool jobs per dispatch")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--status-rows", action="store_true", help="a pool_server row each")
    parser.add_argument("--json", type=Path, help="write the results there")
    opts = parser.parse_args(argv)
    setup = Setup(opts.servers, opts.in_flight, opts.done, opts.affinities, opts.due,
                  opts.status_rows)  # fmt: skip
    results = {"machine": machine(), **run(setup, opts.repeat, opts.warmup)}
    print(" ".join(f"{key}={value}" for key, value in results["machine"].items()))
    print(
        f"{setup.servers} servers, {setup.in_flight} jobs in flight, {setup.done} done, "
        f"{setup.affinities} studies held; {setup.due} pool jobs per dispatch, "
        f"{opts.repeat} dispatches (seeded in {results['seed_seconds']} s); "
        f"{results['waits_per_dispatch']} job(s) waited per dispatch"
    )
    for line in table(results):
        print(line)
    per_job_ms = results["dispatch_us_per_job"]["median"] / 1000
    verdict = "met" if per_job_ms < TARGET_MS else "MISSED"
    results["verdict"] = {"choice_per_job_ms": per_job_ms, "target_ms": TARGET_MS,
                          "met": per_job_ms < TARGET_MS}  # fmt: skip
    print(f"choice per job: {per_job_ms:.3f} ms (target < {TARGET_MS:g} ms): {verdict}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
