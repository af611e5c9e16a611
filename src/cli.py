"""The `isdr` command: parses the arguments, asks `isdr.app` and prints the answer."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from isdr import __version__, app
from isdr.config import Settings, describe_settings, load_settings
from isdr.domain.clock import utcnow
from isdr.domain.servers import Server
from isdr.domain.states import SeriesState
from isdr.errors import ConfigError, IsdrError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"isdr: {exc}", file=sys.stderr)
        return 2
    try:
        result: int = args.func(settings, args)
    except IsdrError as exc:  # what a command could not do, in one line
        print(f"isdr: {exc}", file=sys.stderr)
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isdr",
        description="InferenceServer DICOM Relay. Configured by environment variables "
        "(see `isdr config` and docs/configuration.md).",
    )
    parser.add_argument("--version", action="version", version=f"isdr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the relay until SIGTERM/SIGINT").set_defaults(
        func=_serve
    )
    commands.add_parser(
        "demo", help="the whole loop on this machine in under a minute (nothing outside needed)"
    ).set_defaults(func=_demo)
    standin = commands.add_parser(
        "standin",
        help="run the stand-in InferenceServer (both generations) for a relay of your own; "
        "prints the fingerprints to point at it",
    )
    standin.add_argument("--destination", type=Path, help="also run a Store SCP keeping "
                         "what it receives in this folder")  # fmt: skip
    standin.add_argument("--port-v1", type=int, default=0, help="generation 1's port (free)")
    standin.add_argument("--port-v2", type=int, default=0, help="generation 2's port (free)")
    standin.set_defaults(func=_standin)
    commands.add_parser(
        "echo", help="C-ECHO the running relay (exit 0 if it answers): the container's health check"
    ).set_defaults(func=_echo)
    commands.add_parser("config", help="print the effective configuration").set_defaults(
        func=_config
    )
    series = commands.add_parser(
        "series",
        help="list received series (no patient names); `series release ID` submits a held "
        "series as it is, `series delete ID` deletes it",
    )
    series.add_argument(
        "action", nargs="?", choices=("release", "delete"), help="decide on a held series"
    )
    series.add_argument("series_id", nargs="?", type=int, help="the series' id (`isdr series`)")
    series.add_argument("--limit", type=int, default=200, help="at most this many (newest first)")
    series.set_defaults(func=_series)
    _fingerprint_commands(commands)
    jobs = commands.add_parser(
        "jobs",
        help="list jobs; `jobs show ID` prints a timeline, `jobs retry ID` retries a failed "
        "job, `jobs cancel ID` stops one (it fails where it was; a retry resumes it)",
    )
    jobs.add_argument(
        "action", nargs="?", choices=("show", "retry", "cancel"), help="show, retry or cancel a job"
    )
    jobs.add_argument("job_id", nargs="?", type=int, help="the job's id (from `isdr jobs`)")
    jobs.add_argument("--limit", type=int, default=200, help="at most this many (newest first)")
    jobs.set_defaults(func=_jobs)
    servers = commands.add_parser(
        "servers",
        help="the servers of SERVERS_FILE: state, jobs in flight, capacity, last probe, error "
        "rate; `servers drain NAME` stops new jobs going to one, `servers resume NAME` ends that",
    )
    servers.add_argument("action", nargs="?", choices=("drain", "resume"), help="drain or resume")
    servers.add_argument("name", nargs="?", help="the server's name in SERVERS_FILE")
    servers.set_defaults(func=_servers)
    _user_commands(commands)
    return parser


def _user_commands(commands: Any) -> None:
    group = commands.add_parser(
        "users", help="the console's people (USERS_FILE): list, add, remove"
    )
    actions = group.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="names and roles").set_defaults(func=_users_list)
    add = actions.add_parser(
        "add", help="add a person, or give them a new role and password (asked twice)"
    )
    add.add_argument("name", help="letters, digits and . _ @ - (at most 64)")
    roles = [role.value for role in app.Role]
    add.add_argument(
        "--role", choices=roles, default="viewer",
        help="viewer reads; operator also retries, cancels, edits fingerprints",
    )  # fmt: skip
    add.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from the first line of stdin (for scripts)",
    )  # fmt: skip
    add.set_defaults(func=_users_add)
    remove = actions.add_parser("remove", help="remove a person (their sessions end)")
    remove.add_argument("name")
    remove.set_defaults(func=_users_remove)


def _users_list(settings: Settings, _args: argparse.Namespace) -> int:
    users = app.read_users(settings.USERS_FILE).users
    if not users:
        print(f"nobody in {settings.USERS_FILE}: add someone with `isdr users add NAME`")
    for user in users:
        print(f"{user.name}\t{user.role}")
    return 0


def _users_add(settings: Settings, args: argparse.Namespace) -> int:
    password = _new_password(args.password_stdin)
    new = app.set_user(settings.USERS_FILE, args.name, app.Role(args.role), password)
    print(f"{'added' if new else 'changed'} {args.name} ({args.role}) in {settings.USERS_FILE}")
    return 0


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise IsdrError("the two passwords differ: nothing changed")
    return first


def _users_remove(settings: Settings, args: argparse.Namespace) -> int:
    if not app.remove_user(settings.USERS_FILE, args.name):
        print(f"isdr: nobody called {args.name} in {settings.USERS_FILE}", file=sys.stderr)
        return 1
    print(f"removed {args.name} from {settings.USERS_FILE}")
    return 0


def _fingerprint_commands(commands: Any) -> None:
    group = commands.add_parser("fingerprints", help="check fingerprint files, or test them")
    actions = group.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a folder; exit 1 on any error")
    check.add_argument("folder", nargs="?", type=Path, help="default: FINGERPRINT_DIR")
    check.add_argument(
        "--online", action="store_true",
        help="also reach every server (TLS, API generation, model) and C-ECHO every destination",
    )  # fmt: skip
    check.set_defaults(func=_fingerprints_check)
    test = actions.add_parser("test", help="tell per series which fingerprints match, and why not")
    test.add_argument("path", type=Path, help="a DICOM file or a folder of them")
    test.add_argument("--folder", type=Path, help="fingerprints folder (default: FINGERPRINT_DIR)")
    test.set_defaults(func=_fingerprints_test)


def _fingerprints_check(settings: Settings, args: argparse.Namespace) -> int:
    online = settings if args.online else None
    folder = args.folder or settings.FINGERPRINT_DIR
    lines, ok = app.check_fingerprints(folder, online, settings.SENDERS_FILE, settings.SERVERS_FILE)
    print("\n".join(lines))
    return 0 if ok else 1


def _fingerprints_test(settings: Settings, args: argparse.Namespace) -> int:
    print("\n".join(app.test_fingerprints(args.path, args.folder or settings.FINGERPRINT_DIR)))
    return 0


def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    engine = app.open_database(settings)
    if args.action is not None:
        if args.job_id is None:
            print(f"isdr: jobs {args.action} needs a job id", file=sys.stderr)
            return 2
        actions = {"show": _show_job, "retry": _retry_job, "cancel": _cancel_job}
        return actions[args.action](engine, args.job_id)
    return _list_jobs(engine, args.limit)


def _servers(settings: Settings, args: argparse.Namespace) -> int:
    try:
        known = app.load_servers(settings.SERVERS_FILE)
    except ConfigError as exc:
        print(f"isdr: SERVERS_FILE {exc}", file=sys.stderr)
        return 1
    engine = app.open_database(settings)
    if args.action is None:
        return _list_servers(engine, known.servers, settings.SERVERS_FILE)
    if args.name is None:
        print(f"isdr: servers {args.action} needs a server's name", file=sys.stderr)
        return 2
    try:
        who = f"{getpass.getuser()} (isdr servers)"
        drain = args.action == "drain"
        said = app.set_drained(engine, known.servers, args.name, drain, utcnow(), who)
    except LookupError as exc:
        print(f"isdr: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 1
    print(f"{said}; a running relay sees it at its next submit")
    return 0


def _list_servers(engine: app.Engine, servers: Sequence[Server], path: Path) -> int:
    now = utcnow()
    rows = [("NAME", "STATE", "IN FLIGHT", "WEIGHT", "API", "MODELS", "LAST PROBE", "ERRORS 1H",
             "URL / LAST ERROR")]  # fmt: skip
    for s in app.statuses(engine, servers):
        probe = f"{_age(now, s.last_probe_at)} ago" if s.last_probe_at else "never"
        rate = "-" if s.error_rate is None else f"{s.error_rate:.0%}"
        flight = f"{s.in_flight}/{s.capacity}" if s.capacity else str(s.in_flight)
        rows.append((s.name, s.state, flight, f"{s.weight:g}", str(s.api or "-"),
                     ",".join(s.models) or "-", probe, rate,
                     " ".join(filter(None, (s.url, s.last_error[:80]))) or "-"))  # fmt: skip
    _print_table(rows)
    if len(rows) == 1:
        print(f"(no server in {path})")
    return 0


def _show_job(engine: app.Engine, job_id: int) -> int:
    found = app.timeline(engine, job_id)
    if found is None:
        print(f"isdr: no job {job_id}", file=sys.stderr)
        return 1
    job, events = found
    model, server = job.model, job.server
    series = ", ".join(map(str, job.series_ids))
    print(f"job {job.id}: {job.state}; series {series}; fingerprint {job.fingerprint_name}; "
          f"model {model!r} on {server}")  # fmt: skip
    if job.waiting_for:
        print(f"waiting: {job.waiting_for}")
    failed_at = f" (failed at: {job.failed_step})" if job.failed_step else ""
    print(f"attempts {job.attempts}; task {job.task_uid or '-'}; "
          f"last error{failed_at}: {job.last_error or '-'}")  # fmt: skip
    if job.ambiguous_submits:
        print(f"possible orphan tasks on the server: {job.ambiguous_submits} (submits that got "
              "no answer once the whole archive had gone; their times are in the timeline): "
              "ask the server's administrator to delete them")  # fmt: skip
    deliveries, outputs = app.job_details(engine, job_id)
    if job.output_dir:
        print(f"output: {outputs.dicom} DICOM file(s); kept, not DICOM: "
              f"{', '.join(outputs.kept) or '-'}; folder {job.output_dir}"
              f"{' (removed)' if job.files_removed_at else ''}")  # fmt: skip
    for d in deliveries:
        print(f"  to {d.destination}: {d.state}, {d.confirmed} confirmed, "
              f"{d.attempts} failed attempt(s); last error: {d.last_error or '-'}")  # fmt: skip
    for event in events:
        print(f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.state:<10}  {event.message}")
    return 0


def _retry_job(engine: app.Engine, job_id: int) -> int:
    found = app.timeline(engine, job_id)
    outcome = app.retry_failed(engine, job_id, utcnow()) if found else None
    if found is None or outcome is None:
        state = found[0].state if found else "missing"
        print(f"isdr: job {job_id} is {state}; only a failed job can be retried", file=sys.stderr)
        return 1
    if found[0].ambiguous_submits:
        print(f"note: the server may already hold a task from job {job_id}: {found[0].last_error}")
    print(f"job {job_id} is {outcome}; a running relay takes it up within seconds")
    return 0


def _cancel_job(engine: app.Engine, job_id: int) -> int:
    try:
        outcome = app.cancel(engine, job_id, f"{getpass.getuser()} (isdr jobs cancel)", utcnow())
    except (LookupError, ValueError) as exc:
        print(f"isdr: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 1
    print(f"job {job_id} {outcome}")
    return 0


def _list_jobs(engine: app.Engine, limit: int) -> int:
    now = utcnow()
    header = (
        "ID",
        "STATE",
        "SERIES",
        "FINGERPRINT",
        "MODEL",
        "ATTEMPTS",
        "AGE",
        "CHANGED",
        "TASK",
        "LAST ERROR",
    )
    rows = [header]
    for job in app.list_jobs(engine, limit):
        model = job.model
        series = ",".join(map(str, job.series_ids))
        rows.append((str(job.id), job.state, series, job.fingerprint_name, model,
                     str(job.attempts), _age(now, job.created_at), _age(now, job.updated_at),
                     job.task_uid or "-",
                     job.last_error[:80] or "-"))  # fmt: skip
    _print_table(rows)
    if len(rows) == 1:
        print("(no jobs yet)")
    return 0


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for line in rows:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)]
        print("  ".join([*cells, line[-1]]))


def _serve(settings: Settings, _args: argparse.Namespace) -> int:
    try:
        app.serve(settings)
    except IsdrError as exc:
        print(f"isdr: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1  # 2: a setting to change
    return 0


def _demo(_settings: Settings, _args: argparse.Namespace) -> int:
    return app.run_demo(sys.stdout)


def _standin(_settings: Settings, args: argparse.Namespace) -> int:
    return app.run_standin(sys.stdout, args.destination, args.port_v1, args.port_v2)


def _echo(settings: Settings, _args: argparse.Namespace) -> int:
    answer = app.echo_relay(settings)
    print(answer.detail, file=sys.stdout if answer.ok else sys.stderr)
    return 0 if answer.ok else 1


def _config(settings: Settings, _args: argparse.Namespace) -> int:
    rows = describe_settings(settings)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _series(settings: Settings, args: argparse.Namespace) -> int:
    engine = app.open_database(settings)
    if args.action is None:
        return _list_series(engine, args.limit)
    if args.series_id is None:
        print(f"isdr: series {args.action} needs a series id", file=sys.stderr)
        return 2
    decide = app.release_held if args.action == "release" else app.discard_held
    decided = decide(engine, args.series_id, utcnow())
    if decided is None:
        found = app.get_series(engine, args.series_id)
        state = found.state if found else "missing"
        print(f"isdr: series {args.series_id} is {state}; only a held series can be "
              f"{args.action}d", file=sys.stderr)  # fmt: skip
        return 1
    then = (
        "a running relay submits it as one series once it is quiet"
        if args.action == "release"
        else "a running relay removes its files within seconds; nothing is submitted"
    )
    print(f"series {decided.id}: {decided.state_reason}; {then}")
    return 0


def _list_series(engine: app.Engine, limit: int) -> int:
    rows = app.list_series(engine, limit)
    now = utcnow()
    header = ("ID", "STATE", "MODALITY", "INSTANCES", "MB", "FIRST", "QUIET FOR", "FROM", "SERIES")
    table = [header]
    for row in rows:
        table.append(
            (
                str(row.id),
                row.state,
                row.modality or "-",
                str(row.instance_count),
                f"{row.total_bytes / 1e6:.1f}",
                row.first_received_at.strftime("%Y-%m-%d %H:%M:%S"),
                _age(now, row.last_received_at),
                row.calling_ae_title or row.peer_address or "-",
                f"{row.series_description or '-'} ({row.series_instance_uid}, round {row.round})",
            )
        )
    _print_table(table)
    if not rows:
        print("(no series received yet)")
    for row in rows:
        if row.state == SeriesState.HELD:
            print(f"series {row.id} {row.state_reason}: nothing is submitted until "
                  f"`isdr series release {row.id}` (as one series) or "
                  f"`isdr series delete {row.id}`")  # fmt: skip
        elif row.state_reason:
            print(f"series {row.id} {row.state}: {row.state_reason}")
    return 0


def _age(now: datetime, then: datetime) -> str:
    seconds = int((now - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
