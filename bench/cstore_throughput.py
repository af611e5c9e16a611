#!/usr/bin/env python3
"""C-STORE throughput of the relay against dcmtk's storescp, on one machine.

Run by hand, never as a test (see bench/README.md):

    .venv/bin/python bench/cstore_throughput.py --ct-count 40 --mr-count 200 --rounds 1

For every case (workload x number of parallel associations) the receivers are measured
in turn, A B A B ..., each started fresh on a free loopback port with an empty output
folder, and stopped afterwards. The senders are dcmtk `storescu` processes. A run counts
only if every sender exits 0 and every instance is on the receiver's disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pydicom

import isdr
from isdr.config import Settings
from isdr.synthetic import SeriesSpec, write_series

AE_TITLE = "BENCH"
HOST = "127.0.0.1"
PARALLEL = 4
RELAY_BIN = Path(sys.executable).with_name("isdr")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMPLETE_SUFFIX = ".complete"
FILE_PATTERN = "*.dcm"  # what write_series names its files; storescu sends only these
ReceiverKind = Literal["storescp", "relay"]


@dataclass(frozen=True)
class Workload:
    """A synthetic data set: `count` instances split into PARALLEL folders."""

    name: str
    count: int
    rows: int
    columns: int
    series: int  # 1: one series cut into PARALLEL folders; PARALLEL: one series per folder

    @property
    def folder_name(self) -> str:
        return f"{self.name}_{self.count}x{self.rows}x{self.columns}_s{self.series}"


@dataclass(frozen=True)
class Prepared:
    """A workload on disk: its root (all files) and the PARALLEL part folders."""

    workload: Workload
    root: Path
    parts: list[Path]
    files: int
    bytes: int


@dataclass(frozen=True)
class ReceiverSpec:
    """One column of the results: storescp, or the relay with some environment."""

    name: str
    kind: ReceiverKind
    env: dict[str, str] = field(default_factory=dict)
    console: bool = False  # the HTTP side on, and a browser on its dashboard meanwhile


@dataclass
class Running:
    """A receiver that answers C-ECHO."""

    proc: subprocess.Popen[bytes]
    port: int
    output: Path
    log: Path


@dataclass
class Run:
    """One measurement."""

    workload: str
    associations: int
    receiver: str
    round: int
    ok: bool = False
    error: str = ""
    seconds: float | None = None
    expected: int = 0
    received: int = 0
    bytes: int = 0
    relay_cpu_percent: float | None = None
    sender_cpu_percent: float | None = None
    recorded_seconds: float | None = None

    @property
    def recorded_per_s(self) -> float | None:
        """Instances per second until the last one was in the relay's database."""
        return self.expected / self.recorded_seconds if self.ok and self.recorded_seconds else None

    @property
    def instances_per_s(self) -> float | None:
        return self.expected / self.seconds if self.ok and self.seconds else None

    @property
    def mb_per_s(self) -> float | None:
        return self.bytes / 1e6 / self.seconds if self.ok and self.seconds else None


# --------------------------------------------------------------------------- data


def prepare_data(root: Path, workload: Workload) -> Prepared:
    """Generate the workload under `root` unless a complete copy is already there."""
    folder = root / workload.folder_name
    marker = root / f"{workload.folder_name}{COMPLETE_SUFFIX}"  # beside it: storescu scans it
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        _generate(folder, workload)
        marker.write_text("")
        elapsed = time.perf_counter() - started
        log(f"generated {workload.folder_name} in {elapsed:.1f} s")
    parts = sorted(p for p in folder.iterdir() if p.is_dir())
    files = [f for part in parts for f in part.glob(FILE_PATTERN)]
    if len(parts) != PARALLEL or len(files) != workload.count:
        raise SystemExit(f"{folder} is incomplete; delete it and run again")
    return Prepared(workload, folder, parts, len(files), sum(f.stat().st_size for f in files))


def _generate(folder: Path, workload: Workload) -> None:
    base = SeriesSpec(modality=workload.name, rows=workload.rows, columns=workload.columns)
    if workload.series == PARALLEL:
        study = pydicom.uid.generate_uid()
        for index, count in enumerate(_quarters(workload.count)):
            spec = _spec(base, count, study, f"bench {workload.name} series {index + 1}")
            write_series(folder / f"part-{index}", spec)
        return
    # One series, written once, then its files moved into PARALLEL folders.
    files = write_series(folder / "all", _spec(base, workload.count, "", "bench series"))
    start = 0
    for index, count in enumerate(_quarters(workload.count)):
        part = folder / f"part-{index}"
        part.mkdir()
        for path in files[start : start + count]:
            path.rename(part / path.name)
        start += count
    (folder / "all").rmdir()


def _spec(base: SeriesSpec, count: int, study: str, description: str) -> SeriesSpec:
    return SeriesSpec(
        modality=base.modality,
        count=count,
        rows=base.rows,
        columns=base.columns,
        study_instance_uid=study,
        series_description=description,
    )


def _quarters(count: int) -> list[int]:
    share, rest = divmod(count, PARALLEL)
    return [share + (1 if index < rest else 0) for index in range(PARALLEL)]


# --------------------------------------------------------------------------- receivers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescp_command(output: Path, port: int, pdu: int) -> list[str]:
    help_text = _help_text("storescp")
    command = ["storescp"]
    if "--fork" in help_text:
        command.append("--fork")
    if "--accept-all" in help_text:
        command.append("+xa")  # accept what is proposed; never make the sender transcode
    if pdu:
        command += ["-pdu", str(pdu)]
    return [*command, "-dhl", "-aet", AE_TITLE, "-od", str(output), str(port)]


@cache
def _help_text(program: str) -> str:
    done = subprocess.run([program, "--help"], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def relay_env(extra: dict[str, str], run_dir: Path, port: int) -> dict[str, str]:
    """The inherited environment without any relay setting, then only ours."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(
        SCP_HOSTNAME=HOST,
        SCP_PORT=str(port),
        HTTP_PORT="0",
        SCP_AE_TITLE=AE_TITLE,
        DATA_DIR=str(run_dir / "data"),
        INCOMING_DIR=str(run_dir / "incoming"),
        MIN_FREE_DISK_MB="0",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


@contextmanager
def started(spec: ReceiverSpec, run_dir: Path, storescp_pdu: int) -> Iterator[Running]:
    """Start a receiver in its own process group; always stop the whole group."""
    port = free_port()
    log_path = run_dir / f"{spec.kind}.log"
    if spec.kind == "storescp":
        output = run_dir / "out"
        output.mkdir(parents=True)
        command, env, cwd = storescp_command(output, port, storescp_pdu), dcmtk_env(), run_dir
    else:
        output = run_dir / "incoming"
        extra = spec.env | (console_env(run_dir) if spec.console else {})
        command, env, cwd = [str(RELAY_BIN), "serve"], relay_env(extra, run_dir, port), run_dir
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    watcher: subprocess.Popen[bytes] | None = None
    try:
        running = Running(proc, port, output, log_path)
        wait_ready(running)
        if spec.console:
            watcher = watch_console(f"http://{HOST}:{env['HTTP_PORT']}", run_dir)
        yield running
    finally:
        if watcher is not None:
            stop_group(watcher)
        stop_group(proc)


CONSOLE_USER, CONSOLE_PASSWORD = "bench", "a bench password"


def console_env(run_dir: Path) -> dict[str, str]:
    """The HTTP side on a free port, with one person to log in."""
    from isdr.web.users import Role, set_user

    users = run_dir / "users.json"
    set_user(users, CONSOLE_USER, Role.VIEWER, CONSOLE_PASSWORD)
    return {"HTTP_PORT": str(free_port()), "USERS_FILE": str(users)}


def watch_console(base: str, run_dir: Path) -> subprocess.Popen[bytes]:
    """A headless Chromium logged in on the dashboard, until stopped."""
    script = Path(__file__).with_name("console_poller.py")
    with (run_dir / "browser.log").open("wb") as log_file:
        watcher = subprocess.Popen(
            [sys.executable, str(script), base, CONSOLE_USER, CONSOLE_PASSWORD],
            stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
        )  # fmt: skip
    assert watcher.stdout is not None
    if watcher.stdout.readline().strip() != b"ready":
        stop_group(watcher)
        raise RuntimeError(f"the console's browser did not start: {tail(run_dir / 'browser.log')}")
    return watcher


def wait_ready(running: Running) -> None:
    """Until the port takes a TCP connection and then answers a C-ECHO."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            raise RuntimeError(
                f"receiver exited with {running.proc.returncode}: {tail(running.log)}"
            )
        if _connects(running.port) and _echo(running.port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"receiver not ready after {READY_TIMEOUT:.0f} s: {tail(running.log)}")


def _connects(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _echo(port: int) -> bool:
    command = ["echoscu", "-to", "5", "-aec", AE_TITLE, HOST, str(port)]
    done = subprocess.run(command, env=dcmtk_env(), capture_output=True, check=False)
    return done.returncode == 0


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers (storescp --fork children too)."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log(f"receiver {proc.pid} ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killing it")
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def count_files(root: Path) -> int:
    """Regular files under `root`, not counting dot-names (files still being written)."""
    total = 0
    for _folder, _dirs, names in os.walk(root):
        total += sum(1 for name in names if not name.startswith("."))
    return total


def recorded_instances(run_dir: Path) -> int:
    """How many instances the relay has recorded in its database."""
    database = run_dir / "data" / "isdr.sqlite3"
    if not database.exists():
        return 0
    with closing(sqlite3.connect(database, timeout=30)) as connection:
        row = connection.execute("SELECT COALESCE(SUM(instance_count), 0) FROM series").fetchone()
    return int(row[0])


def wait_recorded(run_dir: Path, expected: int, began: float, timeout: float) -> float | None:
    """Seconds from `began` until the relay recorded every instance (None: it never did)."""
    deadline = began + timeout
    while time.monotonic() < deadline:
        if recorded_instances(run_dir) >= expected:
            return time.monotonic() - began
        time.sleep(0.02)
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tail(path: Path, lines: int = 5) -> str:
    if not path.is_file():
        return "(no log)"
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- senders


def sender_folders(data: Prepared, associations: int) -> list[Path]:
    if associations == 1:
        return [data.root]
    if associations == PARALLEL:
        return data.parts
    raise SystemExit(f"associations must be 1 or {PARALLEL}, not {associations}")


def send(folders: Sequence[Path], port: int, logs: Path, timeout: float) -> tuple[float, str]:
    """Run one storescu per folder at once; (seconds until all exited, error or '')."""
    procs: list[subprocess.Popen[bytes]] = []
    errors: list[str] = []
    started_at = time.perf_counter()
    try:
        for index, folder in enumerate(folders):
            command = ["storescu", "-aec", AE_TITLE, "+sd", "+r", "+sp", FILE_PATTERN]
            command += [HOST, str(port), str(folder)]
            with (logs / f"storescu-{index}.log").open("wb") as log_file:
                procs.append(
                    subprocess.Popen(
                        command,
                        env=dcmtk_env(),
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = started_at + timeout
        for index, proc in enumerate(procs):
            code = proc.wait(max(0.0, deadline - time.perf_counter()))
            if code != 0:
                errors.append(
                    f"storescu {index} exit {code}: {tail(logs / f'storescu-{index}.log')}"
                )
        return time.perf_counter() - started_at, "; ".join(errors)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started_at, f"senders still running after {timeout:.0f} s"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- one run


def measure(
    spec: ReceiverSpec, data: Prepared, associations: int, round_: int, opts: argparse.Namespace
) -> Run:
    run = Run(data.workload.name, associations, spec.name, round_, expected=data.files)
    run.bytes = data.bytes
    run_dir = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=opts.workdir))
    try:
        with started(spec, run_dir, opts.storescp_pdu) as receiver:
            pid = receiver.proc.pid
            relay_before = cpu_seconds(pid) if spec.kind == "relay" else 0.0
            senders_before = children_cpu_seconds()
            folders = sender_folders(data, associations)
            began = time.monotonic()
            seconds, error = send(folders, receiver.port, run_dir, opts.timeout)
            if spec.kind == "relay" and not error:
                run.recorded_seconds = wait_recorded(run_dir, data.files, began, opts.timeout)
            senders_cpu = children_cpu_seconds() - senders_before
            if spec.kind == "relay" and receiver.proc.poll() is None:
                relay_cpu = cpu_seconds(pid) - relay_before
                # Until the last instance was recorded: the inbox may still be working after
                # the senders are done (RECEIVER=dcmtk).
                run.relay_cpu_percent = 100.0 * relay_cpu / (run.recorded_seconds or seconds)
            elif spec.kind == "relay":
                error = error or f"relay died: {tail(receiver.log)}"
            run.seconds = seconds
            run.sender_cpu_percent = 100.0 * senders_cpu / seconds
            run.received = count_files(receiver.output)
            if error or run.received != data.files:
                error = "; ".join(filter(None, [f"{run.received} of {data.files} files", error]))
            run.error = error
            run.ok = not error
    except RuntimeError as exc:
        run.error = str(exc)
    finally:
        if not opts.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return run


def describe_run(run: Run) -> str:
    head = f"{run.workload} x{run.associations} {run.receiver:<12} round {run.round}: "
    if not run.ok:
        return head + f"FAILED ({run.error})"
    text = f"{run.seconds:7.2f} s {run.instances_per_s:8.1f} inst/s {run.mb_per_s:7.1f} MB/s"
    text += f", senders CPU {run.sender_cpu_percent:5.1f} %"
    if run.relay_cpu_percent is not None:
        text += f", relay CPU {run.relay_cpu_percent:5.1f} % of a core"
    if run.recorded_seconds is not None:
        text += f", all recorded after {run.recorded_seconds:.2f} s"
    return head + text


# --------------------------------------------------------------------------- report


@dataclass
class Cell:
    """The median of one receiver in one case, or why there is none."""

    runs: int
    failed: int
    instances_per_s: float | None
    mb_per_s: float | None
    relay_cpu_percent: float | None
    recorded_per_s: float | None

    def text(self, value: float | None, digits: int = 1) -> str:
        if self.failed:
            return f"FAILED ({self.failed}/{self.runs})"
        return "-" if value is None else f"{value:.{digits}f}"


def summarize(runs: Sequence[Run]) -> Cell:
    good = [r for r in runs if r.ok]

    def median(values: list[float | None]) -> float | None:
        numbers = [v for v in values if v is not None]
        return statistics.median(numbers) if numbers else None

    return Cell(
        runs=len(runs),
        failed=len(runs) - len(good),
        instances_per_s=median([r.instances_per_s for r in good]),
        mb_per_s=median([r.mb_per_s for r in good]),
        relay_cpu_percent=median([r.relay_cpu_percent for r in good]),
        recorded_per_s=median([r.recorded_per_s for r in good]),
    )


def table(
    runs: Sequence[Run], receivers: Sequence[ReceiverSpec], datasets: Sequence[Prepared]
) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table of medians, and the same as JSON-able rows."""
    baseline = next((s.name for s in receivers if s.kind == "storescp"), None)
    relays = [s.name for s in receivers if s.kind == "relay"]
    header = ["Workload", "Assoc."]
    for spec in receivers:
        header += [f"{spec.name} inst/s", f"{spec.name} MB/s"]
        if spec.kind == "relay":
            header += [f"{spec.name} recorded inst/s", f"{spec.name} CPU %"]
    header += [f"{name}/{baseline}" for name in relays] if baseline else []
    lines = [_markdown_row(header), "|" + "---|" * len(header)]
    rows: list[dict[str, Any]] = []
    for data in datasets:
        name = data.workload.name
        for associations in sorted({r.associations for r in runs if r.workload == name}):
            case = [r for r in runs if r.workload == name and r.associations == associations]
            cells = {
                s.name: summarize([r for r in case if r.receiver == s.name]) for s in receivers
            }
            ratios = {r: _ratio(cells[r], cells[baseline]) for r in relays} if baseline else {}
            lines.append(_markdown_row(_columns(data, associations, receivers, cells, ratios)))
            rows.append(
                {
                    "workload": name,
                    "associations": associations,
                    "cells": {k: asdict(v) for k, v in cells.items()},
                    "ratios_to_baseline": ratios,
                }
            )
    return "\n".join(lines), rows


def _columns(
    data: Prepared,
    associations: int,
    receivers: Sequence[ReceiverSpec],
    cells: dict[str, Cell],
    ratios: dict[str, float | None],
) -> list[str]:
    columns = [_workload_label(data), str(associations)]
    for spec in receivers:
        cell = cells[spec.name]
        columns += [cell.text(cell.instances_per_s), cell.text(cell.mb_per_s)]
        if spec.kind == "relay":
            columns += [cell.text(cell.recorded_per_s), cell.text(cell.relay_cpu_percent, 0)]
    return columns + ["-" if v is None else f"{v:.2f}" for v in ratios.values()]


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ratio(cell: Cell, baseline: Cell) -> float | None:
    if cell.failed or baseline.failed or not cell.instances_per_s or not baseline.instances_per_s:
        return None
    return cell.instances_per_s / baseline.instances_per_s


def _workload_label(data: Prepared) -> str:
    w = data.workload
    return f"{w.name} {w.count} x {w.rows}x{w.columns} ({data.bytes / data.files / 1e6:.3f} MB)"


def machine_info(workdir: Path, storescp_fork: bool) -> dict[str, Any]:
    version = subprocess.run(["storescu", "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "kernel": platform.release(),
        "dcmtk": version.stdout.strip().splitlines()[0] if version.stdout else "?",
        "storescp_fork": storescp_fork,
        "python": platform.python_version(),
        "isdr": isdr.__version__,
        "pydicom": pydicom.__version__,
        "pynetdicom": metadata.version("pynetdicom"),
        "workdir": str(workdir),
        "workdir_fs": _filesystem(workdir),
    }


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _filesystem(path: Path) -> str:
    best, fs = "", "?"
    with suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, kind, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, fs = mount, f"{kind} on {mount}"
    return fs


# --------------------------------------------------------------------------- main


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ct-count", type=int, default=500, help="CT instances, 512x512 (500)")
    p.add_argument("--mr-count", type=int, default=2000, help="MR instances, 64x64 (2000)")
    p.add_argument("--rounds", type=int, default=3, help="runs per receiver and case (3)")
    p.add_argument("--only", choices=["CT", "MR"], help="only this workload")
    p.add_argument("--associations", default="1,4", help=f"comma list of 1 and/or {PARALLEL} (1,4)")
    p.add_argument(
        "--receivers",
        help="comma list of receiver names to measure, in this order "
        "(default: storescp, relay, then every --variant)",
    )
    p.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every relay receiver (repeatable)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VAL,KEY=VAL",
        help="another relay receiver with this extra environment (repeatable)",
    )
    p.add_argument(
        "--console",
        action="store_true",
        help="also measure the relay with its HTTP side on and a headless Chromium on its "
        "dashboard (refreshed every 3 s) while it receives: receiver relay+console",
    )
    p.add_argument("--data", type=Path, help="keep/reuse the generated data here")
    p.add_argument("--workdir", type=Path, help="where receivers write (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write all runs and medians here")
    p.add_argument(
        "--storescp-pdu",
        type=int,
        default=131072,
        help="storescp's max receive PDU; the relay's MAX_PDU_SIZE default is 131072 "
        "(0 = storescp's default, 16384)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run (900)")
    p.add_argument("--keep", action="store_true", help="keep receivers' output folders")
    return p.parse_args(argv)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key.strip()] = value
    return env


def receiver_specs(opts: argparse.Namespace) -> list[ReceiverSpec]:
    base = parse_env(opts.relay_env)
    specs = [ReceiverSpec("storescp", "storescp"), ReceiverSpec("relay", "relay", base)]
    if opts.console:
        specs.append(ReceiverSpec("relay+console", "relay", base, console=True))
    for text in opts.variant:
        name, sep, pairs = text.partition(":")
        if not sep or not name:
            raise SystemExit(f"expected NAME:KEY=VAL,KEY=VAL, got {text!r}")
        extra = parse_env([p for p in pairs.split(",") if p])
        specs.append(ReceiverSpec(name, "relay", base | extra))
    by_name = {s.name: s for s in specs}
    if len(by_name) != len(specs):
        raise SystemExit("receiver names must be unique")
    if not opts.receivers:
        return specs
    chosen = [n.strip() for n in opts.receivers.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown receiver(s) {unknown}; known: {list(by_name)}")
    return [by_name[n] for n in chosen]


def workloads(opts: argparse.Namespace) -> list[Workload]:
    chosen = [
        Workload("CT", opts.ct_count, 512, 512, series=1),
        Workload("MR", opts.mr_count, 64, 64, series=PARALLEL),
    ]
    return [w for w in chosen if w.count > 0 and opts.only in (None, w.name)]


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} (dcmtk) is not on PATH")
    if not RELAY_BIN.is_file():
        raise SystemExit(f"{RELAY_BIN} not found; run with the project's venv python")
    receivers = receiver_specs(opts)
    associations = [int(a) for a in opts.associations.split(",") if a.strip()]
    scratch = Path(tempfile.mkdtemp(prefix="isdr-bench-"))
    opts.workdir = (opts.workdir or scratch / "runs").resolve()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    try:
        data_root = (opts.data or scratch / "data").resolve()
        datasets = [prepare_data(data_root, w) for w in workloads(opts)]
        info = machine_info(opts.workdir, "--fork" in storescp_command(Path(), 0, 0))
        runs: list[Run] = []
        for data in datasets:
            for count in associations:
                for round_ in range(1, opts.rounds + 1):
                    for spec in receivers:
                        run = measure(spec, data, count, round_, opts)
                        log(describe_run(run))
                        runs.append(run)
        report(info, receivers, datasets, runs, opts)
        return 0 if all(r.ok for r in runs) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report(
    info: dict[str, Any],
    receivers: Sequence[ReceiverSpec],
    datasets: Sequence[Prepared],
    runs: Sequence[Run],
    opts: argparse.Namespace,
) -> None:
    print("## C-STORE throughput (medians; MB = 10^6 bytes of Part 10 files)\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    for spec in receivers:
        if spec.kind == "relay":
            print(f"- receiver {spec.name}: relay, extra env {spec.env or '{}'}")
    print(f"- rounds: {opts.rounds}, alternating {', '.join(s.name for s in receivers)}\n")
    text, rows = table(runs, receivers, datasets)
    print(text)
    if opts.json:
        document = {
            "machine": info,
            "receivers": [asdict(s) for s in receivers],
            "rounds": opts.rounds,
            "runs": [
                asdict(r) | {"instances_per_s": r.instances_per_s, "mb_per_s": r.mb_per_s}
                for r in runs
            ],
            "medians": rows,
        }
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {opts.json}")


if __name__ == "__main__":
    sys.exit(main())
