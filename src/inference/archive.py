"""Archives of a series for an InferenceServer, streamed to a file, never whole in memory.

Generation 1 takes a zip: flat for one series, as the original relay sent it; for several
series (a fingerprint with triggers), one folder per trigger and series,
`<trigger>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`, so that a model tells its CT from
its MR by the folder, without reading a header. Generation 2 takes a tar laid out
`<SOPClassUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`, as the original relay 2.0 did,
however many series.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Member:
    """One instance file of the series and the names it goes into an archive under."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    trigger: str = ""  # the trigger its series met, for generation 1's folders


def archive_name(job_id: int, api: int) -> str:
    """The file name: recognisable on the server side as this relay's job."""
    return f"isdr-job-{job_id}.{'zip' if api == 1 else 'tar'}"


def build_archive(target: Path, members: Sequence[Member], api: int) -> Path:
    """Write the archive to `target` (via a temporary name) and return it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.part")
    try:
        if api == 1:
            _write_zip(temp, members)
        else:
            _write_tar(temp, members)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def member_names(members: Sequence[Member], api: int) -> list[str]:
    """Each member's name in the archive, unique whatever the UIDs: two UIDs that clean up
    to the same name (a trailing dot, a stray character) get `-2`, `-3`, ... in order."""
    taken: set[str] = set()
    names = []
    several = len({member.series_instance_uid for member in members}) > 1
    for member in members:
        name = _unique(_name(member, api, several), taken)
        taken.add(name.casefold())
        names.append(name)
    return names


def _name(member: Member, api: int, several: bool) -> str:
    file = f"{_safe(member.sop_instance_uid)}.dcm"
    if api == 1 and not several:
        return file
    if api == 1:
        folder = _safe(member.trigger or "series")
        return "/".join((folder, _safe(member.series_instance_uid), file))
    return "/".join((_safe(member.sop_class_uid), _safe(member.series_instance_uid), file))


def _unique(name: str, taken: set[str]) -> str:
    """The name, or `<stem>-<n>.dcm` with the first n that is free (case-insensitively:
    the server may unpack onto a file system that folds case)."""
    stem = name.removesuffix(".dcm")
    candidate, repeat = name, 1
    while candidate.casefold() in taken:
        repeat += 1
        candidate = f"{stem}-{repeat}.dcm"
    return candidate


def _write_zip(temp: Path, members: Sequence[Member]) -> None:
    # Stored, not deflated: DICOM compresses little, and the network is the bottleneck.
    with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for member, name in zip(members, member_names(members, 1), strict=True):
            archive.write(member.path, arcname=name)


def _write_tar(temp: Path, members: Sequence[Member]) -> None:
    with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as archive:
        for member, name in zip(members, member_names(members, 2), strict=True):
            archive.add(member.path, arcname=name, recursive=False)


def _safe(uid: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in ".-_" else "_" for c in uid).strip(".")
    return cleaned or "unknown"
