"""Putting bytes on disk so that a crash leaves either the whole file or nothing.

A file is written under a temporary dot-name in its final folder, then renamed into
place. With fsync on, the file and every folder touched are flushed before the rename is
reported done, so the instance survives a power loss too.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from isdr import __version__
from isdr.errors import OutOfSpace

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"
IMPLEMENTATION_VERSION = f"ISDR_{__version__}"[:16]
Chunk = bytes | memoryview


def is_temporary(path: Path) -> bool:
    """Whether a name is one of our (or another writer's) files still being written."""
    return path.name.startswith(".") or path.name.endswith((TEMP_SUFFIX, ".tmp"))


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """The preamble, 'DICM' and the encoded File Meta Information group."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


class AtomicWriter:
    """Writes files atomically under one root, keeping a free-space reserve."""

    def __init__(self, root: Path, *, fsync: bool, min_free_bytes: int) -> None:
        self.root = root
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes

    def write(self, path: Path, chunks: Iterable[Chunk], size: int) -> None:
        """Write `chunks` (`size` bytes in all) to `path`; all of it or nothing."""
        self.check_space(size)
        self._make_folders(path.parent)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            self._write_temp(temp, chunks)
            os.replace(temp, path)
            if self.fsync:
                _fsync_folder(path.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpace(f"disk full while writing {path.name}") from exc
            raise
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def check_space(self, size: int) -> None:
        """Refuse a write that would leave less than the reserve free."""
        if self.min_free_bytes <= 0:
            return
        stats = os.statvfs(self.root)
        free = stats.f_bavail * stats.f_frsize
        if free - size < self.min_free_bytes:
            raise OutOfSpace(
                f"only {free // 2**20} MiB free under {self.root}, "
                f"reserve is {self.min_free_bytes // 2**20} MiB"
            )

    def _write_temp(self, temp: Path, chunks: Iterable[Chunk]) -> None:
        with open(temp, "xb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())

    def _make_folders(self, folder: Path) -> None:
        if folder.is_dir():
            return
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for created in missing:
                _fsync_folder(created.parent)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(root: Path) -> int:
    """Delete the temporary files a crash left behind; returns how many."""
    removed = 0
    for temp in root.rglob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.warning("removed %d half-written file(s) left by an earlier stop", removed)
    return removed
