"""Unpacking what an InferenceServer sends back, trusting none of it.

The output is a zip (API 1) or a tar (API 2), whichever its first bytes say. Members
with absolute paths or `..`, links, devices and FIFOs are refused, and so is an archive
beyond the limits on total size and member count. Sizes are counted as bytes are
written, not taken from the archive's own claims, so a zip bomb stops at the limit. A
refusal leaves nothing behind, and nothing is ever written outside the target folder.

A name clash is not a refusal: generation 2 flattens the model's sub-folders, so two
members can share a name. The second keeps its content under a name with a suffix
(`mask.nii.gz`, then `mask~2.nii.gz`), and the result says what was renamed. Folder
entries with nothing inside them (generation 1 zips only the top level of the model's
output) are reported too: the server dropped what was in them.
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
MAX_NAME_BYTES = 255  # what file systems allow for one name
MAX_VARIANTS = 10_000


class HostileArchive(IsdrError):
    """The archive breaks a rule; the message says which, and names the member."""


@dataclass(frozen=True)
class Unpacked:
    """What an archive unpacked to."""

    files: list[Path]
    renamed: list[tuple[str, str]]  # (member name, the name it was written under)
    empty_folders: list[str]  # folder entries with no file under them


@dataclass(frozen=True)
class Limits:
    """How much an archive may unpack to."""

    max_bytes: int
    max_members: int


def unpack(archive: Path, target: Path, limits: Limits) -> Unpacked:
    """Unpack `archive` into `target` (created)."""
    target.mkdir(parents=True, exist_ok=True)
    result = Unpacked([], [], [])
    try:
        if zipfile.is_zipfile(archive):
            folders = _unpack_zip(archive, target, limits, result)
        elif _is_tar(archive):
            folders = _unpack_tar(archive, target, limits, result)
        else:
            raise HostileArchive("not a zip or tar archive")
    except HostileArchive:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise HostileArchive(f"corrupt archive: {exc}") from exc
    result.empty_folders.extend(_empty(folders, target, result.files))
    return result


def _empty(folders: set[str], target: Path, files: list[Path]) -> list[str]:
    """The folder entries under which no file was written."""
    filled = {str(path.relative_to(target).parent.as_posix()) for path in files}
    filled |= {parent for name in filled for parent in _parents(name)}
    return sorted(folder + "/" for folder in folders if folder not in filled)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


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
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        raise HostileArchive(
            f"member {name[:80]!r}... has a name longer than {MAX_NAME_BYTES} bytes"
        )
    return target.joinpath(*parts)


def _is_root(name: str) -> bool:
    """A folder entry for the archive's own root (`.` or `./`): nothing to make."""
    return not [
        part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", ".")
    ]


def free_name(target: Path, destination: Path) -> Path:
    """`destination` (under `target`), or a name not yet taken: `stem~2.ext`, `stem~3.ext`...
    for a file; for a folder on the way that is a file already (member `a`, then `a/b`),
    `a~2/b`. The same names for the same archive, whatever the attempt."""
    parts = destination.relative_to(target).parts
    current = target
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        candidate = current / part
        taken = candidate.exists() if last else candidate.is_file()
        current = _variant(current, part, last) if taken else candidate
    return current


def _variant(folder: Path, name: str, is_file: bool) -> Path:
    stem, dot, extensions = name.partition(".")
    for number in range(2, MAX_VARIANTS):
        candidate = folder / f"{stem}~{number}{dot}{extensions}"
        if not (candidate.exists() if is_file else candidate.is_file()):
            return candidate
    raise HostileArchive(f"more than {MAX_VARIANTS} members named {name!r}")


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


def _copy(
    source: IO[bytes], root: Path, destination: Path, budget: _Budget, name: str,
    result: Unpacked,
) -> None:  # fmt: skip
    """Write one member, under a free name if another member took its name."""
    target = free_name(root, destination)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = target.open("xb")
    except OSError as exc:
        raise HostileArchive(f"member {name!r} cannot be written: {exc.strerror}") from exc
    with out:
        while chunk := source.read(CHUNK):
            budget.spend(len(chunk), name)
            out.write(chunk)
    result.files.append(target)
    if target != destination:
        result.renamed.append((name, target.relative_to(root).as_posix()))


def _unpack_zip(archive: Path, target: Path, limits: Limits, result: Unpacked) -> set[str]:
    """Unpack the files; returns the folder entries met."""
    budget, folders = _Budget(limits), set()
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            budget.member(info.filename)
            if info.is_dir() and _is_root(info.filename):
                continue
            destination = safe_member_path(target, info.filename)
            if info.is_dir():
                folders.add(destination.relative_to(target).as_posix())
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip does not say
            if kind and kind != stat.S_IFREG:
                raise HostileArchive(f"member {info.filename!r} is not a regular file")
            with opened.open(info) as source:
                _copy(source, target, destination, budget, info.filename, result)
    return folders


def _unpack_tar(archive: Path, target: Path, limits: Limits, result: Unpacked) -> set[str]:
    """Unpack the files; returns the folder entries met."""
    budget, folders = _Budget(limits), set()
    with _open_tar(archive) as opened:
        for member in opened:
            budget.member(member.name)
            if member.isdir() and _is_root(member.name):
                continue
            destination = safe_member_path(target, member.name)
            if member.isdir():
                folders.add(destination.relative_to(target).as_posix())
                continue
            if not member.isfile():
                raise HostileArchive(f"member {member.name!r} is a link or a device")
            source = opened.extractfile(member)
            if source is None:
                raise HostileArchive(f"member {member.name!r} cannot be read")
            with source:
                _copy(source, target, destination, budget, member.name, result)
    return folders


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
