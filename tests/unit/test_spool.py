"""Data sets spooled to disk as they arrive: whole when the disk holds, refused when not."""

from __future__ import annotations

import errno
from io import BytesIO
from pathlib import Path

from isdr.scp.spool import SpooledDataSet, discard, spool_problem


def test_a_spooled_data_set_reads_back_whole_and_leaves_no_file(tmp_path: Path) -> None:
    spooled = SpooledDataSet(tmp_path, BytesIO(b"head-"))
    spooled.write(b"tail")
    with spooled.getbuffer() as view:
        assert bytes(view) == b"head-tail"
    assert spool_problem(spooled) is None
    discard(spooled)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fails_while_spooling_is_told_not_hidden(tmp_path: Path) -> None:
    spooled = SpooledDataSet(tmp_path, BytesIO(b"head-"))

    def full(data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    spooled._file.write = full  # type: ignore[method-assign]
    assert spooled.write(b"x" * 100) == 100  # the rest is dropped, not raised into pynetdicom
    problem = spool_problem(spooled)
    assert problem is not None and "No space left on device" in problem
    discard(spooled)
    assert list(tmp_path.iterdir()) == []
