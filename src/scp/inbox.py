"""The folder is the inbox: files that appear under INCOMING_DIR are recorded too.

Another SCP (say dcmtk's storescp) or a person can put DICOM files anywhere under
INCOMING_DIR. Each one is taken once it is complete (closed after writing, or moved
in and settled), sorted into its place and recorded exactly like a received instance.
At start-up the tree is reconciled: every complete file that is not recorded yet is
taken. The watcher starts first, so that nothing placed during reconciliation is missed;
taking a file twice is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from isdr.db.series import is_recorded, recorded_paths
from isdr.dicom.headers import file_is_complete
from isdr.errors import InstanceRejected
from isdr.logs import log_exception
from isdr.scp.ingest import Ingestor
from isdr.scp.paths import loggable
from isdr.scp.storage import is_temporary

logger = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0
# Only what tells that a file is complete or arrived; writes and opens are not watched, as
# each received instance would otherwise cost the watcher several events.
WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]


class Inbox:
    """Watches INCOMING_DIR and adopts the files that were not received by our SCP."""

    def __init__(self, ingestor: Ingestor, engine: Engine, spool: Path | None = None) -> None:
        self.ingestor = ingestor
        self.engine = engine
        self.root = ingestor.root
        self.spool = spool.resolve() if spool is not None else None
        self.own_writes = ingestor.writer.recent
        self._observer: Any = None
        self._reported: set[Path] = set()
        self._pending: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._adopting = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        """Watch the tree in background threads."""
        self._stopping.clear()
        self._observer = Observer()
        self._observer.schedule(
            _Handler(self), str(self.root), recursive=True, event_filter=WATCHED_EVENTS
        )
        self._observer.daemon = True
        self._observer.start()
        threading.Thread(target=self._recheck_pending, daemon=True, name="inbox-recheck").start()
        logger.info("inbox: watching %s for files placed there by other means", self.root)

    def stop(self) -> None:
        """Stop watching."""
        self._stopping.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None

    def reconcile(self) -> int:
        """Adopt every complete, unrecorded file under the tree; returns how many."""
        known = recorded_paths(self.engine)
        adopted = 0
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            if path.relative_to(self.root).as_posix() in known or is_temporary(path):
                continue
            try:
                adopted += self._take_complete(path)
            except Exception:  # noqa: BLE001 (one file must not stop the start-up)
                log_exception(logger, f"inbox: cannot take {loggable(self.root, path)}")
        if adopted:
            logger.info("inbox: recorded %d file(s) found under %s at start-up", adopted, self.root)
        return adopted

    def take(self, path: Path) -> None:
        """Adopt a file that was closed after writing or moved in, once it is whole."""
        if self._not_ours_to_take(path):
            return
        relative = path.relative_to(self.root).as_posix()
        if not self._in_spool(path) and is_recorded(self.engine, relative):
            return
        self._take_complete(path)

    def take_when_settled(self, path: Path, *, recheck: bool = True) -> None:
        """Adopt a file that appeared, once it has settled.

        A file being written in place is taken by its close event; one moved in from
        outside the tree gets no such event, so it is looked at again after a pause.
        """
        if self._not_ours_to_take(path):
            return
        if time.time() - path.stat().st_mtime > SETTLE_SECONDS:
            self.take(path)
        elif recheck:
            with self._lock:
                self._pending[path] = time.monotonic() + 2 * SETTLE_SECONDS
        else:
            self.take(path)

    def _not_ours_to_take(self, path: Path) -> bool:
        """Still being written, just written by our own SCP, or gone."""
        return is_temporary(path) or path in self.own_writes or not path.is_file()

    def take_folder(self, folder: Path) -> None:
        """Adopt every file of a folder that appeared (moved in whole)."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.take_when_settled(path)

    def _take_complete(self, path: Path) -> int:
        with self._adopting:
            if not path.is_file():
                return 0  # taken meanwhile by another thread
            if self._leaves_tree(path):
                self._report(path, "a link to a file outside INCOMING_DIR; left where it is")
                return 0
            if not file_is_complete(path):
                self._set_aside_incomplete(path)
                return 0
            return self._adopt(path)

    def _adopt(self, path: Path) -> int:
        source = "storescp" if self._in_spool(path) else "inbox"
        try:
            self.ingestor.adopt_file(path, source)
        except InstanceRejected as exc:
            self._report(path, exc.reason)
            return 0
        except OSError as exc:
            self._report(path, f"cannot move or read it: {exc.strerror}")
            return 0
        return 1

    def _leaves_tree(self, path: Path) -> bool:
        """Whether the file is a link (or under a linked folder) that leads out of the tree:
        its outside target must never be recorded, archived and sent."""
        real = path.resolve()
        if real.is_relative_to(self.root.resolve()):
            return False
        logger.debug("inbox: %s leads to %s, outside the tree", path, real)
        return True

    def _in_spool(self, path: Path) -> bool:
        return self.spool is not None and path.parent == self.spool

    def _set_aside_incomplete(self, path: Path) -> None:
        if self._in_spool(path):
            # storescp answers Success only after closing a whole file: this one's sender
            # got none and will send it again.
            path.unlink(missing_ok=True)
            logger.warning("inbox: removed %s, left incomplete by storescp", path.name)
        else:
            self._report(path, "incomplete or not DICOM; left where it is")

    def _report(self, path: Path, reason: str) -> None:
        with self._lock:
            if path in self._reported:
                return
            self._reported.add(path)
        logger.warning("inbox: not recording %s: %s", loggable(self.root, path), reason)

    def _recheck_pending(self) -> None:
        """One thread looks again at the files that had not settled (never one per file)."""
        while not self._stopping.wait(SETTLE_SECONDS / 2):
            now = time.monotonic()
            with self._lock:
                due = [path for path, when in self._pending.items() if when <= now]
                for path in due:
                    del self._pending[path]
            for path in due:
                self.guarded(self.take_when_settled, path, recheck=False)

    def guarded(self, action: Any, path: Path, **options: Any) -> None:
        """Run one action on one file; a failure is logged and the watch goes on."""
        try:
            if path.is_relative_to(self.root):
                action(path, **options)
        except Exception:  # noqa: BLE001 (the top of a watcher thread)
            log_exception(logger, f"inbox: cannot take {loggable(self.root, path)}")


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_created(self, event: FileSystemEvent) -> None:
        # A file or folder moved in from outside the tree shows up as created, not moved.
        path = _path(event.src_path)
        if isinstance(event, DirCreatedEvent):
            self.inbox.guarded(self.inbox.take_folder, path)
        elif isinstance(event, FileCreatedEvent) and not self.inbox.own_writes.pop(path):
            self.inbox.guarded(self.inbox.take_when_settled, path)

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self.inbox.guarded(self.inbox.take, _path(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        destination = _path(event.dest_path)
        if self.inbox.own_writes.pop(destination):
            return  # our own atomic rename: the SCP records that file itself
        if isinstance(event, DirMovedEvent):
            self.inbox.guarded(self.inbox.take_folder, destination)
        elif isinstance(event, FileMovedEvent):
            self.inbox.guarded(self.inbox.take, destination)


def _path(raw: str | bytes) -> Path:
    return Path(raw.decode() if isinstance(raw, bytes) else raw)
