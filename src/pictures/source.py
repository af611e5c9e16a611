"""Reading DICOM files for pictures: the header first, its bounds checked, then only the
frames wanted. Every failure of pydicom on a file becomes a PictureError naming the file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import iter_pixels
from pydicom.uid import UID

from isdr.pictures import PictureError

MAX_PIXELS = 4096 * 4096  # per frame
MAX_BYTES = 512 * 1024 * 1024  # all frames, decoded
Frame = NDArray[Any]  # its dtype is the file's

# What pydicom raises on a broken or hostile file, when reading it or decoding its pixels.
_READ_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    struct.error,
    zlib.error,
)
_DECODE_ERRORS = (*_READ_ERRORS, NotImplementedError, RuntimeError)
_IMAGE_KEYWORDS = ("Rows", "Columns", "BitsAllocated")


@dataclass(frozen=True)
class Layout:
    """The size of an image's pixel data, from its header."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int

    @property
    def decoded_bytes(self) -> int:
        """What all its frames take once decoded (1-bit pixels decode to a byte each)."""
        sample_bytes = max(1, (self.bits_allocated + 7) // 8)
        return self.frames * self.rows * self.columns * self.samples * sample_bytes


def why(exc: BaseException) -> str:
    """The first line of an exception's message, short, or its type when it has none. An
    OSError says only its reason: its message holds the path, which holds the PatientID."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Translate pydicom's failures on `path` into PictureError: '<name> <what>: <why>'."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise PictureError(f"{path.name} {what}: {why(exc)}") from exc


def header(path: Path) -> Dataset:
    """Everything of a file but its pixel data."""
    with reading(path, "cannot be read as DICOM"):
        return dcmread(path, stop_before_pixels=True)


def image_header(path: Path) -> tuple[Dataset, Layout]:
    """The header of an image whose pixels are within bounds and can be decoded here."""
    ds = header(path)
    layout = layout_of(path, ds)
    check_decodable(path, ds)
    return ds, layout


def layout_of(path: Path, ds: Dataset) -> Layout:
    """The image's layout, refused when it is no image or too large to decode."""
    missing = [keyword for keyword in _IMAGE_KEYWORDS if keyword not in ds]
    if missing:
        raise PictureError(f"{path.name} is not an image: it has no {', '.join(missing)}")
    with reading(path, "has malformed image attributes"):
        layout = Layout(
            int(ds.Rows),
            int(ds.Columns),
            int(ds.get("NumberOfFrames") or 1),
            int(ds.get("SamplesPerPixel") or 1),
            int(ds.BitsAllocated),
        )
    check_bounds(path, layout)
    return layout


def check_bounds(path: Path, layout: Layout) -> None:
    if min(layout.rows, layout.columns, layout.frames, layout.samples) < 1:
        raise PictureError(f"{path.name} has no pixels: {_dimensions(layout)}")
    if layout.rows * layout.columns > MAX_PIXELS:
        raise PictureError(f"{path.name} is too large to picture: {_dimensions(layout)} pixels")
    if layout.decoded_bytes > MAX_BYTES:
        mib = layout.decoded_bytes // (1024 * 1024)
        raise PictureError(
            f"{path.name} is too large to picture: {_dimensions(layout)} pixels "
            f"would take {mib} MiB decoded, more than {MAX_BYTES // (1024 * 1024)} MiB"
        )


def _dimensions(layout: Layout) -> str:
    return f"{layout.frames} frame(s) of {layout.rows} x {layout.columns}"


def check_decodable(path: Path, ds: Dataset) -> None:
    """Refuse a transfer syntax that pydicom cannot decode with what is installed here."""
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    if not syntax:
        raise PictureError(f"{path.name} has no transfer syntax in its file meta")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise PictureError(f"{path.name} uses {syntax.name}, which pydicom cannot decode") from exc
    if not decoder.is_available:
        raise PictureError(
            f"{path.name} is compressed as {syntax.name}, which cannot be decoded here "
            "(no decoder for it is installed)"
        )


def frames(path: Path, indices: Sequence[int]) -> list[Frame]:
    """The frames at `indices`, decoded (colour as RGB), and nothing else of the pixel data."""
    try:
        return list(iter_pixels(path, indices=indices))
    except AttributeError as exc:  # what pydicom raises when the file ends before pixel data
        raise PictureError(f"{path.name} has no pixel data") from exc
    except _DECODE_ERRORS as exc:
        raise PictureError(f"{path.name}: its pixel data cannot be decoded: {why(exc)}") from exc
