from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from isdr.inference.archive import Member, archive_name, build_archive, member_names


def members(tmp_path: Path) -> list[Member]:
    result = []
    for index in range(3):
        path = tmp_path / "series" / f"{index}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"dicom %d" % index)
        result.append(Member(path, f"1.2.3.{index}", "1.2.840.10008.5.1.4.1.1.2", "1.2.3"))
    return result


def test_generation_1_gets_a_flat_zip(tmp_path: Path) -> None:
    archive = build_archive(tmp_path / "out" / archive_name(7, 1), members(tmp_path), 1)
    assert archive.name == "isdr-job-7.zip"
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == ["1.2.3.0.dcm", "1.2.3.1.dcm", "1.2.3.2.dcm"]
        assert opened.read("1.2.3.1.dcm") == b"dicom 1"
    assert [p.name for p in archive.parent.iterdir()] == ["isdr-job-7.zip"]


def test_generation_2_gets_a_tar_by_sop_class_and_series(tmp_path: Path) -> None:
    archive = build_archive(tmp_path / archive_name(8, 2), members(tmp_path), 2)
    with tarfile.open(archive) as opened:
        names = sorted(opened.getnames())
    assert names == [f"1.2.840.10008.5.1.4.1.1.2/1.2.3/1.2.3.{i}.dcm" for i in range(3)]


def colliding(tmp_path: Path) -> list[Member]:
    """Four instances whose UIDs all clean up to the name `1.2.3.4.dcm`."""
    result = []
    for index, uid in enumerate(["1.2.3.4", "1.2.3.4.", ".1.2.3.4", "1.2.3.4-2"]):
        path = tmp_path / "series" / f"{index}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"dicom %d" % index)
        result.append(Member(path, uid, "1.2.840.10008.5.1.4.1.1.2", "1.2.3"))
    return result


def test_uids_that_differ_by_a_trailing_dot_get_distinct_zip_members(tmp_path: Path) -> None:
    archive = build_archive(tmp_path / archive_name(9, 1), colliding(tmp_path), 1)
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        contents = sorted(opened.read(name) for name in names)
    assert names == ["1.2.3.4.dcm", "1.2.3.4-2.dcm", "1.2.3.4-3.dcm", "1.2.3.4-2-2.dcm"]
    assert contents == [b"dicom %d" % index for index in range(4)]  # none lost


def test_uids_that_clean_up_alike_get_distinct_tar_members(tmp_path: Path) -> None:
    archive = build_archive(tmp_path / archive_name(10, 2), colliding(tmp_path), 2)
    with tarfile.open(archive) as opened:
        names = [name.rsplit("/", 1)[1] for name in opened.getnames()]
    assert len(set(names)) == 4 and names[0] == "1.2.3.4.dcm"


def test_member_names_are_the_same_for_the_same_members(tmp_path: Path) -> None:
    made = colliding(tmp_path)
    assert member_names(made, 2) == member_names(list(made), 2)


def two_series(tmp_path: Path) -> list[Member]:
    """A CT of two instances and an MR of one, each under the trigger it met."""
    found = []
    for index, (series, trigger, sop_class) in enumerate(
        [("1.2.10", "CT", "1.2.840.10008.5.1.4.1.1.2")] * 2
        + [("1.2.20", "MR T1", "1.2.840.10008.5.1.4.1.1.4")]
    ):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(b"dicom %d" % index)
        found.append(Member(path, f"1.2.3.{index}", sop_class, series, trigger))
    return found


def test_generation_1_gets_a_folder_per_trigger_and_series_when_a_job_holds_several(
    tmp_path: Path,
) -> None:
    archive = build_archive(tmp_path / "out" / archive_name(9, 1), two_series(tmp_path), 1)
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == [
            "CT/1.2.10/1.2.3.0.dcm", "CT/1.2.10/1.2.3.1.dcm", "MR_T1/1.2.20/1.2.3.2.dcm",
        ]  # fmt: skip


def test_generation_2_keeps_its_layout_for_several_series(tmp_path: Path) -> None:
    archive = build_archive(tmp_path / "out" / archive_name(9, 2), two_series(tmp_path), 2)
    with tarfile.open(archive) as opened:
        assert sorted(opened.getnames()) == [
            "1.2.840.10008.5.1.4.1.1.2/1.2.10/1.2.3.0.dcm",
            "1.2.840.10008.5.1.4.1.1.2/1.2.10/1.2.3.1.dcm",
            "1.2.840.10008.5.1.4.1.1.4/1.2.20/1.2.3.2.dcm",
        ]
