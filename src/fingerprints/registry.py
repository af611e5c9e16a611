"""The fingerprints in force, reloaded within moments of a change to FINGERPRINT_DIR.

A FINGERPRINT_DIR that does not exist is not created (a misspelt path would silently
become an empty folder): it is a warning, looked for every second, and watched from
the moment it appears.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from isdr.domain.fingerprint import Fingerprint
from isdr.fingerprints.loader import Loaded, load_folder

logger = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.3
APPEAR_POLL_SECONDS = 1.0  # how often a missing FINGERPRINT_DIR is looked for


class FingerprintRegistry:
    """Holds the loaded fingerprints; a watcher thread swaps in a new set on every change."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded = Loaded()
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._observer: Any = None
        self._watching = False

    def current(self) -> dict[str, Fingerprint]:
        """The usable fingerprints, by file name (a snapshot: never changes under you)."""
        return dict(self._loaded.fingerprints)

    def reload(self) -> Loaded:
        """Load the folder again and log one summary line.

        A file that was good and is now broken (a half-saved edit, a typo) keeps its last
        good version until it is fixed or removed: a typo must not turn the series it
        routes into unmatched ones, whose files DELETE_ON_POST would remove.
        """
        loaded = load_folder(self.folder)
        broken = {error.file for error in loaded.errors}
        kept = {
            name: fingerprint
            for name, fingerprint in self._loaded.fingerprints.items()
            if name in broken and name not in loaded.fingerprints
        }
        loaded.fingerprints.update(kept)
        self._loaded = loaded
        log = logger.warning if loaded.errors else logger.info
        log("fingerprints in %s: %s", self.folder, loaded.summary())
        for warning in loaded.warnings:
            logger.warning("fingerprint %s", warning)
        if kept:
            logger.warning(
                "fingerprints: keeping the last good version of %s", ", ".join(sorted(kept))
            )
        return loaded

    def start(self) -> None:
        """Load now, then reload after every change to the folder (once it exists)."""
        if not self.folder.is_dir():
            logger.warning(
                "FINGERPRINT_DIR=%s does not exist: no fingerprint will match until it is created",
                self.folder,
            )
        self.reload()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self._watch()
        threading.Thread(target=self._reload_on_change, daemon=True, name="fingerprints").start()

    def stop(self) -> None:
        """Stop watching."""
        self._stopping.set()
        self._changed.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def _watch(self) -> bool:
        """Watch the folder if it exists now; whether it is watched."""
        if not self._watching and self.folder.is_dir():
            self._observer.schedule(_Changed(self._changed), str(self.folder), recursive=False)
            self._watching = True
        return self._watching

    def _reload_on_change(self) -> None:
        while True:
            self._changed.wait(None if self._watching else APPEAR_POLL_SECONDS)
            if self._stopping.is_set():
                return
            if not self._watching:
                if not self._watch():
                    continue
                logger.info("FINGERPRINT_DIR=%s now exists: loading and watching it", self.folder)
            self._stopping.wait(DEBOUNCE_SECONDS)  # let an editor finish writing
            self._changed.clear()
            try:
                self.reload()
            except Exception:  # the top of a thread: keep the old set, keep watching
                logger.exception("fingerprints: reloading %s failed", self.folder)


class _Changed(FileSystemEventHandler):
    def __init__(self, changed: threading.Event) -> None:
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("opened", "closed_no_write"):
            self.changed.set()
