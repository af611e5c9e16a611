"""Logging to stdout, configured once by the command line."""

from __future__ import annotations

import logging
import sys

from isdr.config import Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """Send every log line to stdout, at the configured levels."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL)
    _configure_pynetdicom(settings)


def _configure_pynetdicom(settings: Settings) -> None:
    level = settings.pynetdicom_level
    pynetdicom_logger = logging.getLogger("pynetdicom")
    pynetdicom_logger.handlers.clear()
    pynetdicom_logger.propagate = level != "NONE"
    pynetdicom_logger.setLevel(logging.CRITICAL + 1 if level == "NONE" else level)
