"""Putting bytes on disk so that a crash leaves either the whole file or nothing.

A file is written under a temporary dot-name in a staging folder beside the tree (or,
where that cannot be, in its final folder), then renamed into place. With fsync on, the
file and every folder touched are flushed before the rename is reported done, so the
instance survives a power loss too.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from isdr import __version__
from isdr.errors import OutOfSpace

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"
IMPLEMENTATION_VERSION = f"ISDR_{__version__}"[:16]
PREAMBLE = b"\x00" * 128 + b"DICM"
Chunk = bytes | memoryview


def is_temporary(path: Path) -> bool:
    """Whether a name is one of our (or another writer's) files still being written."""
    return path.name.startswith(".") or path.name.endswith((TEMP_SUFFIX, ".tmp"))


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """The preamble, 'DICM' and the File Meta Information group, encoded directly.

    Group 0002 is always Explicit VR Little Endian; encoding these seven elements by hand
    costs a few microseconds, where building and writing a pydicom dataset costs 0.25 ms
    per instance (measured), on the path of every C-STORE.
    """
    elements = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _uid(sop_class_uid)),
            _meta_element(0x0003, b"UI", _uid(sop_instance_uid)),
            _meta_element(0x0010, b"UI", _uid(transfer_syntax)),
            _meta_element(0x0012, b"UI", _uid(PYDICOM_IMPLEMENTATION_UID)),
            _meta_element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION)),
            _meta_element(0x0016, b"AE", _text(source_ae)) if source_ae else b"",
        )
    )
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(elements)))
    return PREAMBLE + group_length + elements


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:64]
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:16]
    return raw + b" " if len(raw) % 2 else raw


class RecentPaths:
    """Paths this process has just renamed into the tree, so that the watcher skips them."""

    def __init__(self, ttl: float = 120.0) -> None:
        self._ttl = ttl
        self._items: OrderedDict[str, float] = OrderedDict()  # str hashes faster than Path
        self._lock = threading.Lock()

    def add(self, path: Path) -> None:
        """Remember `path` for a while."""
        now = time.monotonic()
        key = str(path)
        with self._lock:
            self._items[key] = now
            self._items.move_to_end(key)
            while self._items and next(iter(self._items.values())) < now - self._ttl:
                self._items.popitem(last=False)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return str(path) in self._items

    def pop(self, path: Path) -> bool:
        """Whether `path` was just written here (and forget it)."""
        with self._lock:
            return self._items.pop(str(path), None) is not None


def staging_folder(root: Path) -> Path | None:
    """A folder beside root, on the same file system, for files still being written.

    Writing there keeps the watcher of root from seeing each temporary file; the final
    rename into root is the only event. None when no such folder can be had (root is a
    mount point, say): temporary files then go beside their targets.
    """
    staging = root.parent / f".{root.name}.staging"
    probe = staging / f".probe-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    landed = root / probe.name
    try:
        staging.mkdir(exist_ok=True)
        probe.write_bytes(b"")
        os.replace(probe, landed)  # a bind mount shares st_dev yet refuses this (EXDEV)
        landed.unlink()
        return staging
    except OSError as exc:
        probe.unlink(missing_ok=True)
        logger.info("no staging folder beside %s (%s); writing temporaries in place", root, exc)
    return None


class AtomicWriter:
    """Writes files atomically under one root, keeping a free-space reserve."""

    def __init__(
        self, root: Path, *, fsync: bool, min_free_bytes: int, staging: Path | None = None
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.staging = staging
        self.recent = RecentPaths()

    def write(self, path: Path, chunks: Iterable[Chunk], size: int) -> None:
        """Write `chunks` (`size` bytes in all) to `path`; all of it or nothing."""
        self.check_space(size)
        self._make_folders(path.parent)
        temp = self._temporary_for(path)
        try:
            self._write_temp(temp, chunks)
            self.recent.add(path)
            self._rename(temp, path)
            if self.fsync:
                _fsync_folder(path.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            self.recent.pop(path)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpace(f"disk full while writing {path.name}") from exc
            raise
        except BaseException:
            temp.unlink(missing_ok=True)
            self.recent.pop(path)
            raise

    def _rename(self, temp: Path, path: Path) -> None:
        try:
            os.replace(temp, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The tree moved to another file system under us: stage in place from now on.
            logger.warning("staging folder and %s are on different file systems", self.root)
            self.staging = None
            os.replace(self._copy_beside(temp, path), path)

    def _copy_beside(self, temp: Path, path: Path) -> Path:
        beside = self._temporary_for(path)
        try:
            with temp.open("rb") as source:
                self._write_temp(beside, iter(lambda: source.read(1 << 20), b""))
        except BaseException:
            beside.unlink(missing_ok=True)
            raise
        finally:
            temp.unlink(missing_ok=True)
        return beside

    def _temporary_for(self, path: Path) -> Path:
        name = f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        return (self.staging or path.parent) / name

    def room(self) -> int:
        """How many bytes may be written before the free space falls to the reserve
        (without limit when that cannot be told: the write will say why it fails)."""
        try:
            stats = os.statvfs(self.root)
        except OSError:
            return 1 << 62
        return max(0, stats.f_bavail * stats.f_frsize - max(0, self.min_free_bytes))

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
