"""Unpacking predictions: hostile archives are refused and nothing escapes the folder."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from isdr.inference.unpack import HostileArchive, Limits, unpack

LIMITS = Limits(max_bytes=1_000_000, max_members=10)


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for info in members:
            payload = data.get(info.name, b"")
            info.size = len(payload) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return path


def file_info(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_a_zip_and_a_tar_of_predictions_unpack(tmp_path: Path) -> None:
    zipped = make_zip(tmp_path / "out.zip", {"rtstruct.dcm": b"RT", "masks/lung.nii.gz": b"NII"})
    written = unpack(zipped, tmp_path / "z", LIMITS).files
    assert sorted(p.relative_to(tmp_path / "z").as_posix() for p in written) == [
        "masks/lung.nii.gz",
        "rtstruct.dcm",
    ]
    tarred = make_tar(tmp_path / "out.tar", [file_info("seg.dcm"), file_info("container.log")],
                      {"seg.dcm": b"SEG"})  # fmt: skip
    written = unpack(tarred, tmp_path / "t", LIMITS).files
    assert sorted(p.name for p in written) == ["container.log", "seg.dcm"]
    assert (tmp_path / "t" / "seg.dcm").read_bytes() == b"SEG"


@pytest.mark.parametrize(
    "name", ["../escaped.dcm", "a/../../escaped.dcm", "/etc/escaped", "C:/x", "..\\escaped"]
)
def test_a_member_that_would_leave_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", {"ok.dcm": b"x", name: b"evil"})
    with pytest.raises(HostileArchive, match=r"absolute|climbs"):
        unpack(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "escaped.dcm").exists()
    assert not (tmp_path / "out").exists(), "nothing is left behind"


def test_a_symlink_or_a_device_in_a_tar_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("link.dcm")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = make_tar(tmp_path / "link.tar", [file_info("ok.dcm"), link], {"ok.dcm": b"x"})
    with pytest.raises(HostileArchive, match="link or a device"):
        unpack(archive, tmp_path / "out", LIMITS)
    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    with pytest.raises(HostileArchive, match="link or a device"):
        unpack(make_tar(tmp_path / "dev.tar", [device], {}), tmp_path / "out2", LIMITS)


def test_a_symlink_in_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(HostileArchive, match="not a regular file"):
        unpack(path, tmp_path / "out", LIMITS)


def test_a_zip_bomb_stops_at_the_size_limit(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(50_000_000)})
    assert archive.stat().st_size < 200_000
    with pytest.raises(HostileArchive, match="zip bomb"):
        unpack(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(11)})
    with pytest.raises(HostileArchive, match="more than 10 members"):
        unpack(archive, tmp_path / "out", LIMITS)


@pytest.mark.parametrize("content", [b"", b"not an archive at all", b"PK\x03\x04truncated"])
def test_something_that_is_not_an_archive_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "junk").write_bytes(content)
    with pytest.raises(HostileArchive):
        unpack(tmp_path / "junk", tmp_path / "out", LIMITS)


def flattened_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar as generation 2 makes it: sub-folders flattened, so names can repeat."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_two_members_with_one_name_are_both_kept_under_a_deterministic_suffix(
    tmp_path: Path,
) -> None:
    members = [("mask.nii.gz", b"a"), ("mask.nii.gz", b"b"), ("mask.nii.gz", b"c"), ("x", b"1")]
    archive = flattened_tar(tmp_path / "twice.tar", members)
    result = unpack(archive, tmp_path / "out", LIMITS)
    contents = {p.name: p.read_bytes() for p in result.files}
    assert contents == {
        "mask.nii.gz": b"a",
        "mask~2.nii.gz": b"b",
        "mask~3.nii.gz": b"c",
        "x": b"1",
    }
    assert result.renamed == [("mask.nii.gz", "mask~2.nii.gz"), ("mask.nii.gz", "mask~3.nii.gz")]
    again = unpack(archive, tmp_path / "again", LIMITS)
    assert [p.name for p in again.files] == [p.name for p in result.files]


def test_a_file_and_a_folder_of_the_same_name_are_both_kept(tmp_path: Path) -> None:
    archive = flattened_tar(tmp_path / "clash.tar", [("a", b"file"), ("a/b.dcm", b"inside")])
    result = unpack(archive, tmp_path / "out", LIMITS)
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in result.files)
    assert names == ["a", "a~2/b.dcm"] and result.renamed == [("a/b.dcm", "a~2/b.dcm")]


def test_folder_entries_with_nothing_inside_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "v1.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("seg.dcm", b"SEG")
        archive.writestr(zipfile.ZipInfo("masks/"), b"")
        archive.writestr(zipfile.ZipInfo("notes/"), b"")
        archive.writestr("notes/read.me", b"kept")
    result = unpack(path, tmp_path / "out", LIMITS)
    assert result.empty_folders == ["masks/"]


def test_a_tar_made_of_a_folder_with_its_dot_member_unpacks(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "seg.dcm").write_bytes(b"SEG")
    path = tmp_path / "dot.tar"
    with tarfile.open(path, "w") as archive:  # as `tar -C src -cf dot.tar .` makes it
        archive.add(source, arcname=".")
    result = unpack(path, tmp_path / "out", LIMITS)
    assert [p.name for p in result.files] == ["seg.dcm"] and result.empty_folders == []


def test_a_member_with_a_name_too_long_for_the_file_system_is_refused_with_its_reason(
    tmp_path: Path,
) -> None:
    archive = make_zip(tmp_path / "long.zip", {"a" * 300 + ".dcm": b"x"})
    with pytest.raises(HostileArchive, match="longer than 255 bytes"):
        unpack(archive, tmp_path / "out", LIMITS)
