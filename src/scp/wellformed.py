"""Is a received data set whole, encoded as its context says, and the one its request names?

The sorting tags are read with pydicom, which forgives a great deal: a value cut short
is returned short, implicit VR on an explicit-VR context is read with a warning, and
nothing after (0020,000E) is looked at. Stored as they are, such bytes make a file
whose meta group lies about it, or one cut in the middle of its pixel data, answered
with Success. So before anything is parsed, the element headers of the whole data set
are walked (values are skipped, never decoded): every element must have a known VR
(explicit VR), fit inside the bytes received, and every undefined length must end with
its delimiter. It costs microseconds per element, and no allocation.

A deflated data set is inflated first (into memory, with a bound: see `inflate_bounded`)
and its inflated bytes are walked alike; what is stored is still the deflated bytes as
received.
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from isdr.dicom.headers import STATUS_CANNOT_UNDERSTAND
from isdr.domain.keys import SortKeys
from isdr.errors import InstanceRejected

MAX_DEPTH = 32  # nested sequences; real data rarely goes beyond 5
# A deflated data set may inflate to INFLATE_RATIO times its size, at least INFLATE_FLOOR
# bytes, and never more than INFLATE_CAP bytes: a sender pays for the memory it makes the
# relay spend, and a deflate bomb (1,000:1 and more) is refused before it is inflated.
INFLATE_RATIO = 64
INFLATE_FLOOR = 64 * 2**20
INFLATE_CAP = 1 * 2**30
UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
_KNOWN_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED_ALLOWED = frozenset((b"SQ", b"UN", b"OB", b"OW"))


class Malformed(InstanceRejected):
    """The data set is cut short, or not encoded as its transfer syntax says."""

    def __init__(self, reason: str) -> None:
        super().__init__(STATUS_CANNOT_UNDERSTAND, reason)


@dataclass(frozen=True)
class _Encoding:
    """How element headers are laid out: the structs to read them with."""

    implicit: bool
    little: bool
    tag: struct.Struct  # group, element
    header: struct.Struct  # implicit: tag, 4-byte length; explicit: tag, VR, 2-byte length
    long_length: struct.Struct


def _encoding(implicit: bool, little: bool) -> _Encoding:
    endian = "<" if little else ">"
    return _Encoding(
        implicit,
        little,
        struct.Struct(endian + "HH"),
        struct.Struct(endian + ("HHI" if implicit else "HH2sH")),
        struct.Struct(endian + "I"),
    )


_ENCODINGS = {
    (implicit, little): _encoding(implicit, little)
    for implicit in (True, False)
    for little in (True, False)
}


def check_received(data: bytes | memoryview, transfer_syntax: str) -> None:
    """Raise Malformed (status 0xC210) unless `data` is a whole data set in its syntax.

    Deflated data sets are inflated and walked one at a time (they are rare): parallel
    associations cannot each hold an inflation of up to a GiB.
    """
    syntax = UID(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        with _ONE_INFLATION:
            _check_plain(inflate_bounded(data), syntax)
        return
    if syntax.is_transfer_syntax:
        _check_plain(data, syntax)


_ONE_INFLATION = threading.Lock()


def _check_plain(data: bytes | memoryview, syntax: UID) -> None:
    encoding = _ENCODINGS[bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)]
    if not data:
        raise Malformed("the data set is empty")
    if len(data) >= 8:
        _check_first_element(data, encoding)
    _Walker(data, encoding).elements(0, len(data), depth=0, top=True)


def inflate_limit(size: int) -> int:
    """How many bytes a deflated data set of `size` bytes may inflate to."""
    return min(max(INFLATE_RATIO * size, INFLATE_FLOOR), INFLATE_CAP)


def inflate_bounded(data: bytes | memoryview) -> bytes:
    """The inflated bytes of a deflated data set (raw deflate, as PS3.5 A.5 says).

    Raises Malformed when they do not inflate, when the deflate stream is cut short, or
    when they would inflate beyond `inflate_limit`: at most that many bytes are ever made.
    Bytes after the end of the stream (a pad to an even length) are ignored.
    """
    limit = inflate_limit(len(data))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise Malformed(
            f"the data set does not inflate, as its deflated context says it must: {exc}"
        ) from exc
    if len(inflated) > limit:
        raise Malformed(
            f"the deflated data set of {len(data)} bytes inflates to more than {limit} bytes, "
            "the most the relay inflates (a deflate bomb?)"
        )
    if not inflater.eof:
        raise Malformed("the deflated data set is cut short: its deflate stream does not end")
    return inflated


def _check_first_element(data: bytes | memoryview, encoding: _Encoding) -> None:
    """The claim of the context against the first element, for a refusal that says why.

    In implicit VR, bytes 4-5 are the low half of a length; two capital letters there
    would mean a first element of over 16 kB, which no real data set starts with
    (pydicom's own test). Every instance starts at or before (0008,0016) SOPClassUID,
    so a first group that only fits when its bytes are swapped is the other byte order.
    """
    looks_explicit = _capitals(data, 4)
    if looks_explicit and encoding.implicit:
        raise Malformed(
            "the data set is in explicit VR, but its presentation context says implicit"
        )
    if not looks_explicit and not encoding.implicit:
        raise Malformed(
            "the data set is in implicit VR, but its presentation context says explicit"
            if _plausible_implicit(data)
            else "the data set does not start with a data element (no VR at byte 4)"
        )
    (group,) = struct.unpack_from("<H" if encoding.little else ">H", data)
    (swapped,) = struct.unpack_from(">H" if encoding.little else "<H", data)
    if group > 0x00FF and 0x0002 <= swapped <= 0x0008:
        found, claimed = ("big", "little") if encoding.little else ("little", "big")
        raise Malformed(
            f"the data set is in {found} endian, but its presentation context says {claimed}"
        )


def _plausible_implicit(data: bytes | memoryview) -> bool:
    """Whether the first element reads as implicit VR little endian: a group, a length
    that fits."""
    group, _, length = _ENCODINGS[True, True].header.unpack_from(data)
    return bool(group) and length <= len(data) - 8


def _capitals(data: bytes | memoryview, position: int) -> bool:
    """Whether two bytes look like a VR (pydicom's test for explicit VR)."""
    pair = data[position : position + 2]
    return len(pair) == 2 and all(0x40 < byte < 0x5B for byte in pair)


class _Walker:
    """Walks element headers, skipping values; raises Malformed at the first fault."""

    def __init__(self, data: bytes | memoryview, encoding: _Encoding) -> None:
        self.data = data
        self.encoding = encoding

    def elements(
        self,
        position: int,
        end: int,
        *,
        depth: int,
        top: bool = False,
        until_item_end: bool = False,
    ) -> int:
        """Walk elements from `position`; returns where they end.

        In a defined-length item or the top level they end at `end`; in an item of
        undefined length, after its item delimiter.
        """
        tag_format, header = self.encoding.tag, self.encoding.header
        while position < end or until_item_end:
            if end - position < 8:
                raise Malformed(
                    f"the data set is cut short in an element header at byte {position}"
                )
            group, element = tag_format.unpack_from(self.data, position)
            tag = group << 16 | element
            if tag == ITEM_END and until_item_end:
                return position + 8
            if top and group == 0x0000:
                raise Malformed(f"command element {_tag(tag)} at byte {position} in a data set")
            position = self._element(tag, position, end, header, depth)
        return position

    def _element(self, tag: int, start: int, end: int, header: struct.Struct, depth: int) -> int:
        """Skip one element (walking its items if its length is undefined); returns its end."""
        position = start
        if self.encoding.implicit:
            _, _, length = header.unpack_from(self.data, position)
            vr, position = b"", position + 8
        else:
            _, _, vr, length = header.unpack_from(self.data, position)
            if vr not in _KNOWN_VRS:
                raise Malformed(f"element {_tag(tag)} at byte {start} has no valid VR {vr!r}")
            position += 8
            if vr in _LONG_VRS:
                if end - position < 4:
                    raise Malformed(f"the data set is cut short in the header of {_tag(tag)}")
                (length,) = self.encoding.long_length.unpack_from(self.data, position)
                position += 4
        if length == UNDEFINED:
            if vr and vr not in _UNDEFINED_ALLOWED:
                raise Malformed(f"element {_tag(tag)} ({vr.decode()}) has an undefined length")
            return self._items(tag, vr, position, end, depth + 1)
        if length > end - position:
            raise Malformed(
                f"element {_tag(tag)} at byte {start} declares {length} bytes, "
                f"only {end - position} remain: the data set is cut short or its length is false"
            )
        return position + int(length)

    def _items(self, tag: int, vr: bytes, position: int, end: int, depth: int) -> int:
        """Walk the items of an undefined-length value; returns the end of its delimiter."""
        if depth > MAX_DEPTH:
            raise Malformed(f"sequences nested more than {MAX_DEPTH} deep")
        # An undefined-length UN holds its items in implicit VR little endian (PS3.5 6.2.2).
        inner = _ENCODINGS[True, True] if vr == b"UN" else self.encoding
        tag_format, length_format = inner.tag, inner.long_length
        while True:
            if end - position < 8:
                raise Malformed(f"element {_tag(tag)} of undefined length has no delimiter")
            group, element = tag_format.unpack_from(self.data, position)
            (length,) = length_format.unpack_from(self.data, position + 4)
            item_tag, position = group << 16 | element, position + 8
            if item_tag == SEQUENCE_END:
                return position
            if item_tag != ITEM:
                raise Malformed(f"element {_tag(tag)} holds {_tag(item_tag)} where an item goes")
            if length == UNDEFINED:
                walker = _Walker(self.data, _item_encoding(self.data, position, inner))
                position = walker.elements(position, end, depth=depth, until_item_end=True)
            elif length > end - position:
                raise Malformed(
                    f"an item of {_tag(tag)} declares {length} bytes, only {end - position} remain"
                )
            else:
                position += length


def _item_encoding(data: bytes | memoryview, position: int, encoding: _Encoding) -> _Encoding:
    """An item's own encoding: explicit-VR data sets sometimes carry implicit-VR items
    (pydicom reads them too), so an item whose first VR is not two capitals is implicit."""
    if encoding.implicit or _capitals(data, position + 4):
        return encoding
    return _ENCODINGS[True, encoding.little]


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


STATUS_DOES_NOT_MATCH = 0xA900  # "Data Set does not match SOP Class" (PS3.4 B.2.3)


def check_matches_command(
    keys: SortKeys, affected_sop_class_uid: str, affected_sop_instance_uid: str
) -> None:
    """Refuse a data set that is not the instance its C-STORE request names.

    The sender would believe it stored one instance while the tree holds another; dcmtk's
    storescp refuses it the same way. An empty value (not known) is not compared.
    """
    for name, ours, theirs in (
        ("SOPClassUID", keys.sop_class_uid, affected_sop_class_uid),
        ("SOPInstanceUID", keys.sop_instance_uid, affected_sop_instance_uid),
    ):
        theirs = theirs.strip(" \x00")
        if ours and theirs and ours != theirs:
            raise InstanceRejected(
                STATUS_DOES_NOT_MATCH,
                f"the data set's {name} {ours} is not the request's Affected{name} {theirs}",
            )
