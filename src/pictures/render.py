"""Pictures as PNG bytes: a thumbnail of an instance, an overlay of predictions on a slice, and
the middle slice of a series. Pure functions of the files: no threads, no cache.

Every failure on a bad file is a PictureError that names the file; `worker.Renderer` runs
these functions in a bounded process and caches what they return.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from isdr.pictures import PictureError, grey, regions, source
from isdr.pictures.attributes import as_float
from isdr.pictures.geometry import position_of
from isdr.pictures.regions import Mask, Region, Slice

# One colour per segment or ROI number (number 1 the first), Paul Tol's "bright" and more.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (238, 102, 119),
    (68, 119, 170),
    (34, 136, 51),
    (204, 187, 68),
    (102, 204, 238),
    (170, 51, 119),
    (238, 119, 51),
    (0, 153, 136),
)
OPACITY = 0.45  # of a region's fill; its outline is drawn opaque


def thumbnail(path: Path, size: int = 256) -> bytes:
    """An instance (the middle frame of a multi-frame one) windowed as suits its modality,
    fitted into `size` x `size` and never enlarged: 8-bit grey, or RGB for colour images."""
    _check_size(size)
    _, picture = _picture(path)
    return _png(_fitted(picture, size))


def overlay(base: Path, outputs: Sequence[Path], size: int = 512) -> bytes:
    """The slice `base` in grey with the regions on it of every SEG and RTSTRUCT among
    `outputs` drawn translucent, one colour per segment or ROI: an RGB PNG."""
    _check_size(size)
    target, picture = _picture(base)
    shades = np.asarray(picture.convert("L"), dtype=np.uint8)
    painted = paint(shades, regions.on_slice(target, outputs))
    return _png(_fitted(Image.fromarray(painted), size))


def regions_on(base: Path, outputs: Sequence[Path]) -> int:
    """How many regions `overlay` draws on `base`: segments and ROIs with pixels on it."""
    ds, layout = source.image_header(base)
    return len(regions.on_slice(Slice.of(ds, layout), outputs))


def middle(paths: Sequence[Path]) -> Path:
    """The middle slice of a series: ordered along the slice normal when every file has a
    position, else by InstanceNumber when every file has one, else by file name."""
    if not paths:
        raise PictureError("a series without files has no middle slice")
    ranks = _ranks([source.header(path) for path in paths])
    ordered = sorted(range(len(paths)), key=lambda i: (ranks[i], paths[i].name, str(paths[i])))
    return paths[ordered[len(ordered) // 2]]


def colour_of(number: int) -> tuple[int, int, int]:
    """The colour of segment or ROI `number`."""
    return PALETTE[(number - 1) % len(PALETTE)]


def paint(shades: grey.Bytes, found: Sequence[Region]) -> grey.Bytes:
    """Grey shades (rows x columns) as RGB with each region filled translucent, outlined."""
    painted = np.repeat(shades[..., np.newaxis], 3, axis=2).astype(np.float32)
    for region in found:
        colour = np.array(colour_of(region.number), dtype=np.float32)
        painted[region.mask] = painted[region.mask] * (1 - OPACITY) + colour * OPACITY
        painted[_edge(region.mask)] = colour
    return np.rint(painted).astype(np.uint8)


def _edge(mask: Mask) -> Mask:
    """The pixels of a mask with a neighbour (up, down, left, right) outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inside


def _picture(path: Path) -> tuple[Slice, Image.Image]:
    """The image of an instance (its middle frame), 'L' or 'RGB', and the slice it shows."""
    ds, layout = source.image_header(path)
    frame = source.frames(path, [layout.frames // 2])[0]
    if frame.ndim == 3:
        picture = Image.fromarray(grey.colour(frame, ds))
    else:
        picture = Image.fromarray(grey.grey(frame, ds))
    return Slice.of(ds, layout), picture


def _fitted(picture: Image.Image, size: int) -> Image.Image:
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)  # keeps aspect, never enlarges
    return picture


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_size(size: int) -> None:
    if size < 1:
        raise PictureError(f"a picture must be at least 1 pixel wide, not {size}")


def _ranks(headers: Sequence[Dataset]) -> list[float]:
    """Each file's place in its series: its position along the slice normal when every file
    has one, else its InstanceNumber when every file has one, else none (names decide)."""
    for rank in (position_of, _instance_number):
        found = [rank(ds) for ds in headers]
        complete = [value for value in found if value is not None]
        if len(complete) == len(found):
            return complete
    return [0.0] * len(headers)


def _instance_number(ds: Dataset) -> float | None:
    return as_float(ds.get("InstanceNumber"))


def keep_series(paths: Sequence[Path], copy: Path, size: int = 256) -> bytes:
    """The thumbnail of a series, and a copy of its middle slice at `copy` (for overlays
    of predictions once the series' own files are removed)."""
    chosen = middle(paths)
    picture = thumbnail(chosen, size)
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        temporary = copy.with_suffix(".part")
        shutil.copyfile(chosen, temporary)
        os.replace(temporary, copy)
    except OSError as exc:
        raise PictureError(f"the middle slice cannot be kept: {exc.strerror}") from exc
    return picture


def prediction(
    inputs: Sequence[Path], marks: Sequence[Path], images: Sequence[Path], size: int = 512
) -> bytes:
    """A job's prediction as a picture: its SEG and RTSTRUCT files (`marks`) drawn over the
    input slice in the middle of those they refer to (the middle slice when they name none
    of them); without marks or inputs, the middle image of its derived series (`images`)."""
    if marks and inputs:
        return overlay(_marked_middle(inputs, marks), marks, size)
    if images:
        return thumbnail(middle(images), size)
    raise PictureError("nothing to draw: no derived images, and no input for its SEG/RTSTRUCT")


def _marked_middle(inputs: Sequence[Path], marks: Sequence[Path]) -> Path:
    named = set().union(*(_referenced(path) for path in marks))
    marked = [
        path for path in inputs if str(source.header(path).get("SOPInstanceUID", "")) in named
    ]
    return middle(marked or inputs)


def _referenced(path: Path) -> set[str]:
    """Every ReferencedSOPInstanceUID in a file, at any depth (none if it cannot be read)."""
    try:
        ds = source.header(path)
    except PictureError:
        return set()
    return {
        str(element.value)
        for element in ds.iterall()
        if element.keyword == "ReferencedSOPInstanceUID" and element.value
    }
