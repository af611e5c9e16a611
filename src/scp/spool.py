"""Data sets too large to hold in memory while they arrive go to a file instead.

pynetdicom gathers a data set's fragments in a BytesIO: an instance of a gigabyte costs
a gigabyte of memory until it is stored, and a sender that never ends its data set costs
up to MAX_INSTANCE_MB. Once a data set passes SPOOL_AFTER bytes, its bytes so far move to
a temporary file beside the tree (the staging folder, cleared at every start) and the
rest is appended there; the Store SCP reads it back through a memory map, which the
kernel pages from the file. Small instances, nearly all of them, never touch it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import weakref
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from isdr.scp.storage import TEMP_SUFFIX

SPOOL_AFTER = 8 << 20  # bytes of a data set held in memory before it goes to a file


class SpooledDataSet(BytesIO):
    """A data set being received into a file: a BytesIO to pynetdicom (which checks for
    one) whose own buffer stays empty; `close` removes the file."""

    def __init__(self, folder: Path, head: BytesIO) -> None:
        super().__init__()
        handle, name = tempfile.mkstemp(prefix=".spool-", suffix=TEMP_SUFFIX, dir=folder)
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(handle, "w+b")
        self._map: mmap.mmap | None = None
        self._closed = weakref.finalize(self, _remove, self._file, self.path)
        self.failed: OSError | None = None  # the disk's error: the rest is dropped
        with head.getbuffer() as view:
            self.write(view)

    def write(self, data: Any) -> int:
        if self.failed is None:
            try:
                return self._file.write(data)
            except OSError as exc:
                self.failed = exc
        return len(data)

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def read(self, size: int | None = -1) -> bytes:
        return self._file.read(-1 if size is None else size)

    def getvalue(self) -> bytes:
        with self.getbuffer() as view:
            return bytes(view)

    def getbuffer(self) -> memoryview:
        """The bytes received, mapped from the file (released by the caller)."""
        self._file.flush()
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return memoryview(b"")
        self._map = mmap.mmap(self._file.fileno(), size, access=mmap.ACCESS_READ)
        return memoryview(self._map)

    def close(self) -> None:
        """Unmap and remove the file (its views must have been released)."""
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
        self._closed()
        super().close()


def _remove(handle: BinaryIO, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def spool_large_data_sets(association: Any, folder: Path) -> None:
    """Make a pynetdicom Association move each data set past SPOOL_AFTER to `folder`."""
    dimse = association.dimse
    receive = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        message = dimse.message
        if message is not None:
            data_set = message.data_set
            if type(data_set) is BytesIO and data_set.tell() > SPOOL_AFTER:
                with contextlib.suppress(OSError):  # cannot spool: it stays in memory
                    message.data_set = SpooledDataSet(folder, data_set)
        receive(primitive)

    dimse.receive_primitive = receive_primitive


def spool_problem(data_set: object) -> str | None:
    """Why a spooled data set is not whole (a write to its file failed), or None."""
    if isinstance(data_set, SpooledDataSet) and data_set.failed is not None:
        return f"the disk failed while it arrived ({data_set.failed.strerror or 'error'})"
    return None


def discard(data_set: object) -> None:
    """Remove a data set's file, when it has one."""
    if isinstance(data_set, SpooledDataSet):
        data_set.close()
