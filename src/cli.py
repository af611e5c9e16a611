"""The `isdr` command: serve, config, series."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isdr import __version__
from isdr.config import Settings, describe_settings, load_settings
from isdr.errors import ConfigError, IsdrError

if TYPE_CHECKING:
    from sqlalchemy import Engine


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"isdr: {exc}", file=sys.stderr)
        return 2
    result: int = args.func(settings, args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isdr",
        description="InferenceServer DICOM Relay. Configured by environment variables "
        "(see `isdr config` and the README).",
    )
    parser.add_argument("--version", action="version", version=f"isdr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the relay until SIGTERM/SIGINT").set_defaults(
        func=_serve
    )
    commands.add_parser(
        "demo", help="the whole loop on this machine in under a minute (nothing outside needed)"
    ).set_defaults(func=_demo)
    commands.add_parser(
        "echo", help="C-ECHO the running relay (exit 0 if it answers): the container's health check"
    ).set_defaults(func=_echo)
    commands.add_parser("config", help="print the effective configuration").set_defaults(
        func=_config
    )
    series = commands.add_parser("series", help="list received series (no patient names)")
    series.add_argument("--limit", type=int, default=200, help="at most this many (newest first)")
    series.set_defaults(func=_series)
    _fingerprint_commands(commands)
    jobs = commands.add_parser(
        "jobs", help="list jobs; `jobs show ID` prints a timeline, `jobs retry ID` retries"
    )
    jobs.add_argument("action", nargs="?", choices=("show", "retry"), help="show or retry a job")
    jobs.add_argument("job_id", nargs="?", type=int, help="the job's id (from `isdr jobs`)")
    jobs.add_argument("--limit", type=int, default=200, help="at most this many (newest first)")
    jobs.set_defaults(func=_jobs)
    return parser


def _fingerprint_commands(commands: Any) -> None:
    group = commands.add_parser("fingerprints", help="check fingerprint files, or test them")
    actions = group.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a folder; exit 1 on any error")
    check.add_argument("folder", nargs="?", type=Path, help="default: FINGERPRINT_DIR")
    check.set_defaults(func=_fingerprints_check)
    test = actions.add_parser("test", help="tell per series which fingerprints match, and why not")
    test.add_argument("path", type=Path, help="a DICOM file or a folder of them")
    test.add_argument("--folder", type=Path, help="fingerprints folder (default: FINGERPRINT_DIR)")
    test.set_defaults(func=_fingerprints_test)


def _fingerprints_check(settings: Settings, args: argparse.Namespace) -> int:
    from isdr.fingerprints.loader import load_folder
    from isdr.fingerprints.report import check_lines

    folder = args.folder or settings.FINGERPRINT_DIR
    loaded = load_folder(folder)
    print("\n".join(check_lines(folder, loaded)))
    return 1 if loaded.errors else 0


def _fingerprints_test(settings: Settings, args: argparse.Namespace) -> int:
    from isdr.fingerprints.loader import load_folder
    from isdr.fingerprints.report import test_lines

    loaded = load_folder(args.folder or settings.FINGERPRINT_DIR)
    for error in loaded.errors:
        print(f"ERROR  {error}")
    print("\n".join(test_lines(args.path, loaded.fingerprints)))
    return 0


def _relay_engine(settings: Settings) -> Engine | None:
    """The relay's database; None, said in one line, when there is none where it is looked
    for: a command run in another folder must not make itself a new, empty one."""
    from isdr.db.engine import make_engine

    missing = missing_database(settings, Path.cwd())
    if missing is not None:
        print(f"isdr: {missing}", file=sys.stderr)
        return None
    return make_engine(settings.database_url)


def missing_database(settings: Settings, cwd: Path) -> str | None:
    """Where the relay's SQLite file was looked for and why there, if it is not there."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = cwd / str(url.database)  # an absolute database path stays as it is
    if path.is_file():
        return None
    variable = "DATABASE_URL" if settings.DATABASE_URL else "DATA_DIR"
    value = str(url.database) if settings.DATABASE_URL else str(settings.DATA_DIR)
    relative = (
        "" if Path(str(url.database)).is_absolute() else f", relative to the current folder {cwd}"
    )
    return (
        f"no relay database at {path} ({variable}={value}{relative}): run this in the "
        f"relay's folder or set {variable}"
    )


def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    engine = _relay_engine(settings)
    if engine is None:
        return 1
    if args.action is not None:
        if args.job_id is None:
            print(f"isdr: jobs {args.action} needs a job id", file=sys.stderr)
            return 2
        return (
            _show_job(engine, args.job_id)
            if args.action == "show"
            else _retry_job(engine, args.job_id)
        )
    return _list_jobs(engine, args.limit)


def _show_job(engine: Any, job_id: int) -> int:
    from isdr.db.delivery import job_details
    from isdr.db.jobs import timeline

    found = timeline(engine, job_id)
    if found is None:
        print(f"isdr: no job {job_id}", file=sys.stderr)
        return 1
    job, events = found
    model = job.fingerprint.get("model_human_readable_id", "-")
    print(f"job {job.id}: {job.state}; series {job.series_id}; fingerprint {job.fingerprint_name}; "
          f"model {model!r} on {job.fingerprint.get('inference_server_url', '-')}")  # fmt: skip
    failed_at = f" (failed at: {job.failed_step})" if job.failed_step else ""
    print(f"attempts {job.attempts}; task {job.task_uid or '-'}; "
          f"last error{failed_at}: {job.last_error or '-'}")  # fmt: skip
    deliveries, outputs = job_details(engine, job_id)
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


def _retry_job(engine: Any, job_id: int) -> int:
    from isdr.db.delivery import retry_failed
    from isdr.db.jobs import timeline

    found = timeline(engine, job_id)
    outcome = retry_failed(engine, job_id, datetime.now(UTC)) if found else None
    if found is None or outcome is None:
        state = found[0].state if found else "missing"
        print(f"isdr: job {job_id} is {state}; only a failed job can be retried", file=sys.stderr)
        return 1
    if "may" in found[0].last_error:
        print(f"note: the server may already hold a task from job {job_id}: {found[0].last_error}")
    print(f"job {job_id} is {outcome}; a running relay takes it up within seconds")
    return 0


def _list_jobs(engine: Any, limit: int) -> int:
    from isdr.db.jobs import list_jobs

    now = datetime.now(UTC)
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
    for job in list_jobs(engine, limit):
        model = str(job.fingerprint.get("model_human_readable_id", "-"))
        rows.append((str(job.id), job.state, str(job.series_id), job.fingerprint_name, model,
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
    from isdr.app import serve
    from isdr.logs import configure_logging

    configure_logging(settings)
    try:
        serve(settings)
    except IsdrError as exc:
        print(f"isdr: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(_settings: Settings, _args: argparse.Namespace) -> int:
    from isdr.demo.run import run_demo

    return run_demo(sys.stdout)


def _echo(settings: Settings, _args: argparse.Namespace) -> int:
    import logging

    from isdr.scu.echo import echo

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL + 1)  # the answer says it all
    tls = None
    if settings.SCP_TLS_CERT_FILE:
        from isdr.tls import self_check_context

        tls = self_check_context(Path(settings.SCP_TLS_CERT_FILE), Path(settings.SCP_TLS_KEY_FILE))
    answer = echo(settings.SCP_HOSTNAME, settings.SCP_PORT, settings.SCP_AE_TITLE, tls=tls)
    print(answer.detail, file=sys.stdout if answer.ok else sys.stderr)
    return 0 if answer.ok else 1


def _config(settings: Settings, _args: argparse.Namespace) -> int:
    rows = describe_settings(settings)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _series(settings: Settings, args: argparse.Namespace) -> int:
    from isdr.db.series import list_series

    engine = _relay_engine(settings)
    if engine is None:
        return 1
    rows = list_series(engine, args.limit)
    now = datetime.now(UTC)
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
    return 0


def _age(now: datetime, then: datetime) -> str:
    seconds = int((now - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
