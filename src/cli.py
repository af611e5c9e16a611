"""The `isdr` command: serve, config, series."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from isdr import __version__
from isdr.config import Settings, describe_settings, load_settings
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
    commands.add_parser("config", help="print the effective configuration").set_defaults(
        func=_config
    )
    series = commands.add_parser("series", help="list received series (no patient names)")
    series.add_argument("--limit", type=int, default=200, help="at most this many (newest first)")
    series.set_defaults(func=_series)
    return parser


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


def _config(settings: Settings, _args: argparse.Namespace) -> int:
    rows = describe_settings(settings)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _series(settings: Settings, args: argparse.Namespace) -> int:
    from isdr.db.engine import make_engine
    from isdr.db.series import list_series

    engine = make_engine(settings.database_url)
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
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)]
        print("  ".join([*cells, line[-1]]))
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
