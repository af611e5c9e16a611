"""Read the few tags an instance is sorted by, without decoding the rest of it.

All of them sit in groups 0008 to 0020, before the pixel data, so parsing stops after
ImagesInAcquisition (0020,1002). Parse failures of the sort tags are translated into
InstanceRejected; the stack's tags (position, orientation, counts) are read as text and
never refuse an instance: a broken one is read as absent.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_dataset, read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from isdr.domain.keys import SortKeys
from isdr.errors import InstanceRejected

LAST_SORT_TAG = 0x00201002  # ImagesInAcquisition: the last of the stack's tags
_HEAD_BYTES = 64 * 1024
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_MISSING_UIDS = 0xC212
_INFLATE_LIMIT = 1 << 20
_PARSE_ERRORS = (
    InvalidDicomError,
    ValueError,
    EOFError,
    struct.error,
    KeyError,
    TypeError,
    NotImplementedError,
    OverflowError,
    LookupError,
    zlib.error,
)
_KEYWORDS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
)


def _stop_after_sort_tags(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) > LAST_SORT_TAG


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = "\\".join(str(item) for item in value)
    return str(value).strip(" \x00")


def keys_from_dataset(dataset: Dataset, sop_class_fallback: str = "") -> SortKeys:
    """SortKeys from a parsed dataset; refuses one that lacks a UID needed to sort it."""
    try:
        values = {keyword: _text(dataset, keyword) for keyword in _KEYWORDS}
    except _PARSE_ERRORS as exc:
        raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, f"cannot decode a tag: {exc}") from exc
    missing = [
        k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not values[k]
    ]
    if missing:
        raise InstanceRejected(STATUS_MISSING_UIDS, f"missing {', '.join(missing)}")
    return SortKeys(
        **_stack_tags(dataset),
        patient_id=values["PatientID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"] or sop_class_fallback,
        modality=values["Modality"],
        study_description=values["StudyDescription"],
        series_description=values["SeriesDescription"],
    )


_STACK_TEXT = {"image_position": 0x00200032, "image_orientation": 0x00200037}
_STACK_COUNTS = {"images_in_acquisition": 0x00201002, "temporal_positions": 0x00200105}
_STACK_TEXT_LIMIT = 200  # characters: 6 decimal strings of 16 and their separators fit


def _stack_tags(dataset: Dataset) -> dict[str, Any]:
    """The stack's tags as their text (and counts as numbers); absent when broken."""
    found: dict[str, Any] = {}
    for name, tag in _STACK_TEXT.items():
        text = _raw_text(dataset, tag)
        found[name] = text if len(text) <= _STACK_TEXT_LIMIT else ""
    for name, tag in _STACK_COUNTS.items():
        text = _raw_text(dataset, tag)
        found[name] = int(text) if text.isdigit() and 0 < len(text) <= 6 else None
    return found


def _raw_text(dataset: Dataset, tag: int) -> str:
    """A tag's value as the text that was sent, without pydicom's conversion (which
    refuses a malformed number); "" when absent or unreadable."""
    try:
        element = dataset.get_item(tag)
    except _PARSE_ERRORS:
        return ""
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value[: _STACK_TEXT_LIMIT + 1].decode("ascii", "replace").strip(" \x00")
    if isinstance(value, list | tuple):
        return "\\".join(str(item) for item in value)
    return "" if value is None else str(value).strip(" \x00")


def _inflated_head(data: bytes | memoryview) -> BinaryIO:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        return io.BytesIO(inflater.decompress(data, _INFLATE_LIMIT))
    except zlib.error as exc:
        raise InstanceRejected(
            STATUS_CANNOT_UNDERSTAND, f"cannot parse the dataset: {exc}"
        ) from exc


SORT_HEAD = 1 << 16  # bytes of a data set the sort tags are looked for in first


def read_sort_keys(data: bytes | memoryview, transfer_syntax: str, sop_class_uid: str) -> SortKeys:
    """SortKeys of a dataset received over the network (no file meta), in its syntax.

    They are read from the first SORT_HEAD bytes (a copy of those only: a spooled
    instance of gigabytes is not copied into memory), and from the whole data set only
    when a large element before them pushes them further.
    """
    syntax = UID(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        return keys_from_dataset(_parsed(_inflated_head(data), syntax), sop_class_uid)
    if len(data) > SORT_HEAD:
        with contextlib.suppress(InstanceRejected):
            stream = io.BytesIO(data[:SORT_HEAD])
            head = _parsed(stream, syntax)
            if stream.tell() < SORT_HEAD:  # stopped past the sort tags, all of them whole
                return keys_from_dataset(head, sop_class_uid)
    return keys_from_dataset(_parsed(io.BytesIO(data), syntax), sop_class_uid)


def _parsed(stream: BinaryIO, syntax: UID) -> Dataset:
    try:
        return read_dataset(
            stream,
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=_stop_after_sort_tags,
        )
    except _PARSE_ERRORS as exc:
        raise InstanceRejected(
            STATUS_CANNOT_UNDERSTAND, f"cannot parse the dataset: {exc}"
        ) from exc


def read_file_sort_keys(path: Path) -> SortKeys:
    """SortKeys of a DICOM file (Part 10, or a bare dataset pydicom can guess).

    The first 64 KiB are parsed directly, which is several times faster than dcmread;
    a file whose sorting tags lie further in goes through dcmread.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as exc:
        raise InstanceRejected(STATUS_CANNOT_UNDERSTAND, f"cannot read {path.name}: {exc}") from exc
    meta = _split_file_meta(head)
    if meta is not None:
        syntax, sop_class, offset = meta
        try:
            return read_sort_keys(memoryview(head)[offset:], syntax, sop_class)
        except InstanceRejected:
            # pydicom would inflate a deflated file whole, however far it inflates: its
            # sorting tags must lie in the first 64 KiB, as they do in any real file.
            if len(head) < _HEAD_BYTES or syntax == DeflatedExplicitVRLittleEndian:
                raise
    return _read_file_sort_keys_slowly(path)


def _split_file_meta(head: bytes) -> tuple[str, str, int] | None:
    """(transfer syntax, SOP class, offset of the dataset) of a Part 10 file's start."""
    if head[128:132] != b"DICM":
        return None
    values: dict[int, str] = {}
    offset = 132
    while offset + 8 <= len(head):
        group, element, vr = struct.unpack_from("<HH2s", head, offset)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", head, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", head, offset + 6)
            offset += 8
        values[element] = head[offset : offset + length].decode("ascii", "replace").strip(" \x00")
        offset += length
    if 0x0010 not in values:
        return None
    return values[0x0010], values.get(0x0002, ""), offset


_SLOW_TAGS = [Tag(keyword) for keyword in _KEYWORDS] + [
    Tag(tag) for tag in (*_STACK_TEXT.values(), *_STACK_COUNTS.values())
]


def _read_file_sort_keys_slowly(path: Path) -> SortKeys:
    try:
        dataset = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=_SLOW_TAGS,
        )
    except (*_PARSE_ERRORS, OSError) as exc:
        raise InstanceRejected(
            STATUS_CANNOT_UNDERSTAND, f"cannot parse {path.name}: {exc}"
        ) from exc
    meta = getattr(dataset, "file_meta", None)
    fallback = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return keys_from_dataset(dataset, fallback)


def file_is_complete(path: Path) -> bool:
    """Whether a DICOM file holds every byte its element lengths promise.

    A writer that crashed leaves a file cut short; pydicom reads such a file without
    complaint, so the top-level elements are walked and their ends checked against the size.
    """
    try:
        size = path.stat().st_size
        meta = read_file_meta_info(path)
        syntax = UID(str(meta.get("TransferSyntaxUID", "")))
        start = 132 + 12 + int(meta.get("FileMetaInformationGroupLength", -1))
        if syntax == DeflatedExplicitVRLittleEndian or not syntax.is_transfer_syntax:
            return start <= size
        with open(path, "rb") as handle:
            handle.seek(start)
            end = start
            elements = data_element_generator(
                handle, syntax.is_implicit_VR, syntax.is_little_endian
            )
            for element in elements:
                end = max(end, _value_end(element, handle.tell()))
    except (*_PARSE_ERRORS, AttributeError, OSError):
        return False
    return end <= size


def _value_end(element: Any, position: int) -> int:
    """Where an element's value ends, by its declared length where it has one.

    A sequence of undefined length comes back parsed (pydicom found its delimiter), so
    the reader's position after it is its end.
    """
    length = getattr(element, "length", None)
    tell = getattr(element, "value_tell", None)
    if length is None or tell is None:
        return position
    if length != 0xFFFFFFFF:
        return int(tell + length)
    # An undefined length is closed by an 8-byte delimiter that is not part of the value.
    return int(tell + len(element.value or b"") + 8)
