from __future__ import annotations

from pathlib import Path

import pytest

from isdr.errors import OutOfSpace
from isdr.scp.storage import AtomicWriter, remove_stale_temporaries


@pytest.mark.parametrize("fsync", [False, True])
def test_a_file_is_written_whole_and_no_temporary_is_left(tmp_path: Path, fsync: bool) -> None:
    writer = AtomicWriter(tmp_path, fsync=fsync, min_free_bytes=0)
    target = tmp_path / "a" / "b" / "x.dcm"
    writer.write(target, [b"head", memoryview(b"body")], 8)
    assert target.read_bytes() == b"headbody"
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_a_failing_write_leaves_nothing(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path, fsync=False, min_free_bytes=0)

    def chunks() -> list[bytes]:
        raise OSError("device went away")

    with pytest.raises(OSError, match="went away"):
        writer.write(tmp_path / "x.dcm", iter(chunks, None), 4)  # type: ignore[call-overload]
    assert list(tmp_path.iterdir()) == []


def test_the_free_space_reserve_refuses_writes(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path, fsync=False, min_free_bytes=2**62)
    with pytest.raises(OutOfSpace) as caught:
        writer.write(tmp_path / "x.dcm", [b"data"], 4)
    assert caught.value.status == 0xA700
    assert list(tmp_path.iterdir()) == []


def test_temporaries_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".x.dcm.1234abcd.part").write_bytes(b"half")
    (tmp_path / "s" / "x.dcm").write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["x.dcm"]


@pytest.mark.parametrize("source_ae", ["STORESCU", "ODD", ""])
def test_the_file_meta_group_is_what_pydicom_reads_back(tmp_path: Path, source_ae: str) -> None:
    from pydicom.filereader import read_file_meta_info

    from isdr.scp.storage import file_meta_bytes

    path = tmp_path / "x.dcm"
    path.write_bytes(
        file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1", source_ae)
    )
    meta = read_file_meta_info(path)
    assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.FileMetaInformationGroupLength == path.stat().st_size - 144
    assert meta.get("SourceApplicationEntityTitle", "") == source_ae


def test_a_write_that_fails_after_its_rename_leaves_no_file_the_sender_was_told_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    import isdr.scp.storage
    from isdr.db.engine import make_engine
    from isdr.db.series import list_series
    from isdr.scp.ingest import Ingestor
    from isdr.synthetic import SeriesSpec, make_instance

    root = tmp_path / "incoming"
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    ingestor = Ingestor(root, AtomicWriter(root, fsync=True, min_free_bytes=0), engine)
    ds = make_instance(SeriesSpec(), 0, generate_uid(), generate_uid())
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)

    def broken_disk(folder: Path) -> None:
        if any(folder.glob("*.dcm")):  # the folder of the file just renamed into place
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(isdr.scp.storage, "_fsync_folder", broken_disk)
    with pytest.raises(OSError):
        ingestor.store_received(fp.getvalue(), ExplicitVRLittleEndian, ds.SOPClassUID, "A", "x")
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert list_series(engine) == []
