from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from isdr.dicom.headers import (
    SORT_HEAD,
    file_is_complete,
    read_file_sort_keys,
    read_sort_keys,
)
from isdr.errors import InstanceRejected
from isdr.synthetic import SeriesSpec, make_instance, write_series

SPEC = SeriesSpec(modality="MR", patient_id="PID-7", series_description="T1 axial")


def encoded(syntax: str, **changes: object) -> bytes:
    ds = make_instance(SPEC, 0, "1.2.3", "1.2.3.4")
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = syntax == ImplicitVRLittleEndian
    buffer.is_little_endian = syntax != ExplicitVRBigEndian
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_sort_keys_are_read_in_every_uncompressed_syntax(syntax: str) -> None:
    keys = read_sort_keys(encoded(syntax), syntax, "")
    assert (keys.patient_id, keys.modality, keys.series_description) == ("PID-7", "MR", "T1 axial")
    assert (keys.study_instance_uid, keys.series_instance_uid) == ("1.2.3", "1.2.3.4")
    assert keys.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_an_instance_without_a_sorting_uid_is_refused(missing: str) -> None:
    with pytest.raises(InstanceRejected, match=missing):
        read_sort_keys(
            encoded(ExplicitVRLittleEndian, **{missing: None}), ExplicitVRLittleEndian, ""
        )


def test_garbage_is_refused_with_a_reason() -> None:
    with pytest.raises(InstanceRejected) as caught:
        read_sort_keys(b"\xff" * 300, ExplicitVRLittleEndian, "")
    assert caught.value.status & 0xF000 in (0xA000, 0xC000)


def test_a_missing_patient_id_is_kept_as_empty() -> None:
    keys = read_sort_keys(
        encoded(ExplicitVRLittleEndian, PatientID=None), ExplicitVRLittleEndian, ""
    )
    assert keys.patient_id == ""


def test_a_file_cut_short_is_not_complete(tmp_path: Path) -> None:
    [path] = write_series(tmp_path, SeriesSpec(count=1))
    assert file_is_complete(path)
    assert read_file_sort_keys(path).modality == "CT"
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-10])
    assert not file_is_complete(cut)
    (tmp_path / "text.dcm").write_text("not dicom at all")
    assert not file_is_complete(tmp_path / "text.dcm")


def test_a_file_whose_sorting_tags_lie_beyond_the_first_bytes_is_still_read(tmp_path: Path) -> None:
    [path] = write_series(tmp_path, SeriesSpec(count=1, series_description="far"))
    ds = dcmread(path)
    ds.add_new(0x00090010, "LO", "BIG CREATOR")
    ds.add_new(0x00091000, "OB", b"\x00" * 200_000)
    ds.save_as(path)
    assert read_file_sort_keys(path).series_description == "far"


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_files_in_other_syntaxes_are_read(tmp_path: Path, syntax: str) -> None:
    [path] = write_series(tmp_path, SeriesSpec(count=1, patient_id="P-9"))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    assert read_file_sort_keys(path).patient_id == "P-9"


def with_undefined_length_sequence(path: Path) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = dcmread(path)
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True  # as many modalities write it
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_file_with_an_undefined_length_sequence_is_complete(tmp_path: Path) -> None:
    [path] = write_series(tmp_path, SeriesSpec(count=1))
    path = with_undefined_length_sequence(path)
    assert file_is_complete(path)
    assert read_file_sort_keys(path).modality == "CT"
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-10])
    assert not file_is_complete(cut)


def test_a_deflated_file_whose_sorting_tags_lie_far_in_is_refused_not_inflated_whole(
    tmp_path: Path,
) -> None:
    [path] = write_series(tmp_path, SeriesSpec(count=1, series_description="far"))
    ds = dcmread(path)
    ds.add_new(0x00090010, "LO", "BIG CREATOR")
    ds.add_new(0x00091000, "OB", bytes(80 * 2**20))  # 80 kB deflated: past the first 64 KiB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size > 64 * 1024
    with pytest.raises(InstanceRejected, match="missing"):
        read_file_sort_keys(path)  # pydicom's dcmread would inflate all 80 MiB to find them


def test_bytes_that_do_not_inflate_are_refused_as_not_understood() -> None:
    with pytest.raises(InstanceRejected) as caught:
        read_sort_keys(encoded(ExplicitVRLittleEndian), DeflatedExplicitVRLittleEndian, "")
    assert caught.value.status == 0xC210


def _explicit(ds: Any) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return fp.getvalue()


def test_the_sort_keys_of_a_large_instance_are_read_without_copying_it_whole() -> None:
    ds = make_instance(SeriesSpec(rows=2100, columns=2100), 0, generate_uid(), generate_uid())
    data = memoryview(_explicit(ds))
    tracemalloc.start()
    keys = read_sort_keys(data, ExplicitVRLittleEndian, ds.SOPClassUID)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert keys.sop_instance_uid == ds.SOPInstanceUID
    assert peak < 2 * 2**20, f"{peak} bytes for a {len(data)}-byte data set"


def test_sort_tags_beyond_the_head_are_read_whole_from_the_whole_data_set() -> None:
    ds = make_instance(SeriesSpec(), 0, generate_uid(), generate_uid())
    ds.add_new(0x00091010, "OB", b"x" * (SORT_HEAD * 3))  # a private blob before them
    ds.SeriesDescription = "D" * 64
    keys = read_sort_keys(memoryview(_explicit(ds)), ExplicitVRLittleEndian, ds.SOPClassUID)
    assert keys.series_description == "D" * 64
    assert keys.series_instance_uid == ds.SeriesInstanceUID


def test_a_stacks_tags_are_read_as_sent() -> None:
    keys = read_sort_keys(
        encoded(ExplicitVRLittleEndian, ImagesInAcquisition=40), ExplicitVRLittleEndian, ""
    )
    assert (keys.image_position, keys.image_orientation) == (
        "0.0\\0.0\\0.0",
        "1.0\\0.0\\0.0\\0.0\\1.0\\0.0",
    )
    assert (keys.images_in_acquisition, keys.temporal_positions) == (40, None)


@pytest.mark.parametrize(
    ("sent", "broken"),
    [
        (b"12.5\\-3.25\\7.0", b"ab.c\\-d.ef\\g.h"),  # not numbers
        (b"4093", b"-1.5"),  # ImagesInAcquisition not a count
    ],
)
def test_broken_stack_tags_are_read_as_absent_and_never_refuse_the_instance(
    sent: bytes, broken: bytes
) -> None:
    data = encoded(
        ExplicitVRLittleEndian, ImagesInAcquisition=4093, ImagePositionPatient=[12.5, -3.25, 7.0]
    )
    assert len(sent) == len(broken) and data.count(sent) == 1
    keys = read_sort_keys(data.replace(sent, broken), ExplicitVRLittleEndian, "")
    assert keys.sop_instance_uid
    if sent == b"4093":
        assert keys.images_in_acquisition is None
    else:
        assert keys.image_position == "ab.c\\-d.ef\\g.h"  # as text: routing reads it as absent
