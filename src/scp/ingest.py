"""From bytes to a stored, recorded instance: the one path every instance takes.

Both the Store SCP (bytes received over the network) and the inbox watcher (files that
appeared under INCOMING_DIR) come through here, so both are sorted and recorded alike.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from isdr.db.series import NewInstance, Recorded, association_released, record_instance
from isdr.dicom.headers import read_file_sort_keys, read_sort_keys
from isdr.domain.clock import Clock, utcnow
from isdr.domain.keys import SortKeys
from isdr.domain.text import shown
from isdr.errors import STATUS_OUT_OF_RESOURCES, DatabaseUnavailable, InstanceRejected
from isdr.locks import SharedLock
from isdr.scp.paths import instance_relpath, resolve_inside
from isdr.scp.storage import TEMP_SUFFIX, AtomicWriter, file_meta_bytes
from isdr.scp.wellformed import check_matches_command, check_received

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Sender:
    """Who sent an instance: the association's calling AE title, the peer, its uid."""

    calling_ae_title: str
    peer_address: str
    association_uid: str = ""


class Ingestor:
    """Sorts, writes and records instances under one INCOMING_DIR."""

    def __init__(
        self, root: Path, writer: AtomicWriter, engine: Engine, clock: Clock = utcnow
    ) -> None:
        self.root = root.resolve()
        self.writer = writer
        self.engine = engine
        self.clock = clock
        # Held (shared) from creating a file's folder to recording it, and (alone) by the
        # post daemon while it removes a series' files: neither can undo the other's work
        # halfway, and C-STOREs of parallel associations do not wait for each other.
        self.tree_lock = SharedLock()
        # Two C-STOREs of one instance (a resend on another association while the first
        # still waits for the database) must not undo each other's file: one at a time.
        self._path_locks = [threading.Lock() for _ in range(64)]
        # app.py wakes the post daemon: a round may be complete at its association's end.
        self.on_association_released: Callable[[], None] = lambda: None

    def store_received(
        self,
        dataset: bytes | memoryview,
        transfer_syntax: str,
        sop_class_uid: str,
        calling_ae_title: str,
        peer_address: str,
        sop_instance_uid: str = "",
        association_uid: str = "",
    ) -> Recorded:
        """Write a dataset received over the network and record it.

        `sop_class_uid` and `sop_instance_uid` are those of the C-STORE request; a data
        set that is cut short, not in `transfer_syntax`, or another instance is refused.
        """
        check_received(dataset, transfer_syntax)
        keys = read_sort_keys(dataset, transfer_syntax, sop_class_uid)
        check_matches_command(keys, sop_class_uid, sop_instance_uid)
        relpath = instance_relpath(keys)
        path = resolve_inside(self.root, relpath)
        meta = file_meta_bytes(
            keys.sop_class_uid, keys.sop_instance_uid, transfer_syntax, calling_ae_title
        )
        size = len(meta) + len(dataset)
        with self.tree_lock.shared(), self._path_locks[hash(path) % len(self._path_locks)]:
            earlier = _set_aside(path)
            try:
                sender = _Sender(calling_ae_title, peer_address, association_uid)
                recorded = self._write_and_record(
                    keys, path, (meta, dataset, size), earlier, sender
                )
            finally:
                if earlier is not None:
                    earlier.unlink(missing_ok=True)
            self._after_record(keys, recorded, calling_ae_title, peer_address)
        return recorded

    def _write_and_record(
        self,
        keys: SortKeys,
        path: Path,
        content: tuple[bytes, bytes | memoryview, int],
        earlier: Path | None,
        sender: _Sender,
    ) -> Recorded:
        """Write and record a file; if either fails, the file is undone before the sender
        hears of the failure (the copy it replaced, if any, is put back)."""
        meta, dataset, size = content
        try:
            self.writer.write(path, (meta, dataset), size)
            return self._record_only(keys, path, size, sender)
        except DatabaseUnavailable as exc:
            _undo(path, earlier)
            raise InstanceRejected(STATUS_OUT_OF_RESOURCES, f"{exc}: not stored") from exc
        except BaseException:
            _undo(path, earlier)
            raise

    def adopt_file(self, path: Path, source: str = "inbox") -> Recorded:
        """Sort a file that appeared under INCOMING_DIR into place and record it."""
        keys = read_file_sort_keys(path)
        target = resolve_inside(self.root, instance_relpath(keys))
        with self.tree_lock.shared():
            if path.resolve() != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                self.writer.recent.add(target)
                os.replace(path, target)
            recorded = self._record_only(keys, target, target.stat().st_size, _Sender("", source))
        self._after_record(keys, recorded, "", source)
        return recorded

    def association_released(self, association_uid: str) -> None:
        """The association was released: the rounds it alone sent may be complete now."""
        if association_released(self.engine, association_uid, self.clock()):
            self.on_association_released()

    def _record_only(self, keys: SortKeys, path: Path, size: int, sender: _Sender) -> Recorded:
        relpath = path.relative_to(self.root)
        return record_instance(
            self.engine,
            NewInstance(
                patient_id=keys.patient_id,
                study_instance_uid=keys.study_instance_uid,
                series_instance_uid=keys.series_instance_uid,
                sop_instance_uid=keys.sop_instance_uid,
                sop_class_uid=keys.sop_class_uid,
                modality=keys.modality,
                study_description=keys.study_description,
                series_description=keys.series_description,
                folder=relpath.parent.as_posix(),
                path=relpath.as_posix(),
                size=size,
                calling_ae_title=sender.calling_ae_title,
                peer_address=sender.peer_address,
                received_at=self.clock(),
                association_uid=sender.association_uid,
                image_position=keys.image_position,
                image_orientation=keys.image_orientation,
                images_in_acquisition=keys.images_in_acquisition,
                temporal_positions=keys.temporal_positions,
            ),
        )

    def _after_record(
        self, keys: SortKeys, recorded: Recorded, calling_ae_title: str, peer_address: str
    ) -> None:
        """What follows a recorded instance (its row is committed: no undo from here)."""
        if recorded.replaced_path:
            (self.root / recorded.replaced_path).unlink(missing_ok=True)
        if recorded.held or recorded.agrees_again:
            _log_hold(keys, recorded)
        if recorded.series_is_new:
            logger.info(
                "series %s (series id %d, %s, %r) started receiving from %s %s",
                keys.series_instance_uid,
                recorded.series_id,
                shown(keys.modality) or "no modality",
                shown(keys.series_description),
                shown(calling_ae_title) or "-",
                peer_address,
            )


def _log_hold(keys: SortKeys, recorded: Recorded) -> None:
    """One line when a round goes held (counts only: no PatientID above DEBUG), one when
    a resend made it agree again."""
    series, number = keys.series_instance_uid, recorded.series_id
    if recorded.agrees_again:
        logger.info(
            "series %s (series id %d): its instances agree again on one patient and one "
            "study: no longer held", series, number,
        )  # fmt: skip
        return
    logger.warning(
        "series %s (series id %d) %s: nothing is submitted until a person decides: "
        "`isdr series release %d` submits it as one series, `isdr series delete %d` "
        "removes it", series, number, recorded.held, number, number,
    )  # fmt: skip
    logger.debug(
        "series %d: instance %s names PatientID %r, StudyInstanceUID %s",
        number, keys.sop_instance_uid, keys.patient_id, keys.study_instance_uid,
    )  # fmt: skip


def _set_aside(path: Path) -> Path | None:
    """A second name (a hard link, a temporary dot-name) for a file already at `path`, so
    that it can be put back if what replaces it is not recorded; None if there is none."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        os.link(path, aside)
    except FileNotFoundError:
        return None
    except OSError:  # a file system without hard links: a copy does (resends are rare)
        shutil.copyfile(path, aside)
    return aside


def _undo(path: Path, earlier: Path | None) -> None:
    """Remove a file written but not recorded; put back the copy it replaced, if any."""
    if earlier is None:
        path.unlink(missing_ok=True)
    else:
        os.replace(earlier, path)
