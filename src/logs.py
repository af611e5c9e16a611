"""Logging to stdout, configured once by the command line."""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from datetime import UTC, datetime

from isdr.config import Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """Send every log line to stdout, at the configured levels."""
    handler = logging.StreamHandler(sys.stdout)
    json_lines = settings.LOG_FORMAT == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL)
    # watchdog warns when a freshly created folder is watched twice; the second watch
    # replaces the first and nothing is lost, so in `docker logs` it is only noise.
    warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)
    _configure_pynetdicom(settings)
    # APScheduler logs two lines per run of every job, and a warning whenever a long
    # submit makes it skip a run: neither is news to a person reading `docker logs`.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # httpx logs every request at INFO; the relay's own lines already say what was sent.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_pynetdicom(settings: Settings) -> None:
    level = settings.pynetdicom_level
    pynetdicom_logger = logging.getLogger("pynetdicom")
    pynetdicom_logger.handlers.clear()
    pynetdicom_logger.propagate = level != "NONE"
    pynetdicom_logger.setLevel(logging.CRITICAL + 1 if level == "NONE" else level)


def log_exception(log: logging.Logger, what: str) -> None:
    """Log the exception being handled: at ERROR its type and stack, all of it at DEBUG.

    The message of an exception can hold a path, and paths under INCOMING_DIR start with
    a PatientID, which must not appear above DEBUG.
    """
    error = sys.exc_info()[1]
    if error is None:
        log.error("%s", what)
        return
    stack = "".join(traceback.format_tb(error.__traceback__)).rstrip()
    log.error("%s: %s (the message is logged at DEBUG)\n%s", what, type(error).__name__, stack)
    log.debug("%s", what, exc_info=True)


def guarded(log: logging.Logger, what: str, action: Callable[..., object], *args: object) -> bool:
    """Run one step of a daemon, or one item of a step: an unexpected error is logged
    (`log_exception`) and the rest go on. True when it ran to its end."""
    try:
        action(*args)
    except Exception:  # noqa: BLE001 (the top of a step: one item's trouble never stops others)
        log_exception(log, f"{what} failed")
        return False
    return True


def route_thread_errors() -> None:
    """An error nothing caught in a thread (pynetdicom's own, say) is logged in the
    relay's format, like any other (`log_exception`), never printed raw to stderr."""
    threading.excepthook = _log_thread_error


def _log_thread_error(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    log = logging.getLogger(__name__)
    try:
        raise args.exc_value
    except BaseException:  # noqa: BLE001 (re-raised only to be logged with its stack)
        log_exception(log, f"unexpected error in thread {name}; the thread ended")
