"""Unpacking what an InferenceServer sends back, trusting none of it.

The output is a zip (API 1) or a tar (API 2), whichever its first bytes say. Members
with absolute paths or `..`, links, devices and FIFOs are refused, and so is an archive
beyond the limits on total size and member count. Sizes are counted as bytes are
written, not taken from the archive's own claims, so a zip bomb stops at the limit. A
refusal leaves nothing behind, and nothing is ever written outside the target folder.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from isdr.errors import IsdrError

CHUNK = 1 << 20


class HostileArchive(IsdrError):
    """The archive breaks a rule; the message says which, and names the member."""


@dataclass(frozen=True)
class Limits:
    """How much an archive may unpack to."""

    max_bytes: int
    max_members: int


def unpack(archive: Path, target: Path, limits: Limits) -> list[Path]:
    """Unpack `archive` into `target` (created); returns the files written."""
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, target, limits, written)
        elif _is_tar(archive):
            _unpack_tar(archive, target, limits, written)
        else:
            raise HostileArchive("not a zip or tar archive")
    except HostileArchive:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise HostileArchive(f"corrupt archive: {exc}") from exc
    return written


def safe_member_path(target: Path, name: str) -> Path:
    """Where a member goes under `target`, or HostileArchive if it would leave it."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if not cleaned or path.is_absolute() or cleaned.startswith("/") or ":" in path.parts[0]:
        raise HostileArchive(f"member {name!r} has an absolute path")
    if any(part == ".." for part in path.parts):
        raise HostileArchive(f"member {name!r} climbs out with '..'")
    parts = [part for part in path.parts if part not in ("", ".")]
    if not parts:
        raise HostileArchive(f"member {name!r} has no name")
    return target.joinpath(*parts)


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bytes = 0
        self.members = 0

    def member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise HostileArchive(f"more than {self.limits.max_members} members (at {name!r})")

    def spend(self, count: int, name: str) -> None:
        self.bytes += count
        if self.bytes > self.limits.max_bytes:
            raise HostileArchive(
                f"unpacks to more than {self.limits.max_bytes} bytes (at {name!r}): "
                "refused as a possible zip bomb"
            )


def _copy(source: IO[bytes], destination: Path, budget: _Budget, name: str) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        out = destination.open("xb")
    except (FileExistsError, NotADirectoryError) as exc:
        raise HostileArchive(f"member {name!r} clashes with another member") from exc
    with out:
        while chunk := source.read(CHUNK):
            budget.spend(len(chunk), name)
            out.write(chunk)


def _unpack_zip(archive: Path, target: Path, limits: Limits, written: list[Path]) -> None:
    budget = _Budget(limits)
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            budget.member(info.filename)
            destination = safe_member_path(target, info.filename)
            if info.is_dir():
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip does not say
            if kind and kind != stat.S_IFREG:
                raise HostileArchive(f"member {info.filename!r} is not a regular file")
            with opened.open(info) as source:
                _copy(source, destination, budget, info.filename)
            written.append(destination)


def _unpack_tar(archive: Path, target: Path, limits: Limits, written: list[Path]) -> None:
    budget = _Budget(limits)
    with _open_tar(archive) as opened:
        for member in opened:
            budget.member(member.name)
            destination = safe_member_path(target, member.name)
            if member.isdir():
                continue
            if not member.isfile():
                raise HostileArchive(f"member {member.name!r} is a link or a device")
            source = opened.extractfile(member)
            if source is None:
                raise HostileArchive(f"member {member.name!r} cannot be read")
            with source:
                _copy(source, destination, budget, member.name)
            written.append(destination)


def _is_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except OSError:
        return False


@contextmanager
def _open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    # Streaming mode: members are read in order, never all listed up front.
    with tarfile.open(archive, mode="r|*") as opened:
        yield opened
