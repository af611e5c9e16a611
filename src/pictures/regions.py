"""The regions of SEG and RTSTRUCT outputs that lie on one slice, as masks of its pixels.

A SEG frame lies on the slice when it was derived from it (its source image is the slice),
or else when its position is within half a slice thickness of the slice's plane. An RTSTRUCT
contour lies on it when it names the slice among its images, or else when all its points are
that close to the plane. An output that cannot be read is skipped with a warning, so that one
broken prediction does not hide the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from isdr.pictures import PictureError, source
from isdr.pictures.attributes import as_float, floats, text, values
from isdr.pictures.geometry import Plane, plane_of

logger = logging.getLogger(__name__)

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
Mask = NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Region:
    """One segment or ROI on the slice: its number (which picks its colour) and its pixels."""

    number: int
    mask: Mask


@dataclass(frozen=True)
class Slice:
    """What regions are matched against: the slice's identity, size and plane."""

    uid: str
    rows: int
    columns: int
    frame_of_reference: str
    plane: Plane | None

    @classmethod
    def of(cls, ds: Dataset, layout: source.Layout) -> Slice:
        return cls(
            text(ds, "SOPInstanceUID"),
            layout.rows,
            layout.columns,
            text(ds, "FrameOfReferenceUID"),
            plane_of(ds),
        )

    def shares_frame(self, frame_of_reference: str) -> bool:
        """Whether positions may be compared: the same frame of reference, or one unknown."""
        known = self.frame_of_reference and frame_of_reference
        return not known or self.frame_of_reference == frame_of_reference

    def blank(self) -> Mask:
        return np.zeros((self.rows, self.columns), dtype=np.bool_)


def on_slice(target: Slice, outputs: Sequence[Path]) -> list[Region]:
    """Every region of the SEG and RTSTRUCT files among `outputs` that lies on the slice."""
    found: list[Region] = []
    for path in outputs:
        try:
            found += _regions_of(path, target)
        except PictureError as exc:
            logger.warning("Output skipped in an overlay: %s", exc)
    return found


def _regions_of(path: Path, target: Slice) -> list[Region]:
    ds = source.header(path)
    kind = text(ds, "SOPClassUID")
    if kind == SEG:
        return _segments(path, ds, target)
    if kind == RTSTRUCT:
        with source.reading(path, "is a malformed RTSTRUCT"):
            return _rois(ds, target)
    return []


# --- SEG ---------------------------------------------------------------------------------


def _segments(path: Path, ds: Dataset, target: Slice) -> list[Region]:
    layout = source.layout_of(path, ds)
    if (layout.rows, layout.columns) != (target.rows, target.columns):
        logger.info(
            "SEG %s skipped: its frames are %d x %d, the slice %d x %d",
            path.name,
            layout.rows,
            layout.columns,
            target.rows,
            target.columns,
        )
        return []
    with source.reading(path, "is a malformed SEG"):
        threshold = _threshold(path, ds)
        wanted = _frames_on(ds, target)
    if threshold is None or not wanted:
        return []
    source.check_decodable(path, ds)
    decoded = source.frames(path, [index for index, _ in wanted])
    masks = [frame >= threshold for frame in decoded]
    return _merged([(number, mask) for (_, number), mask in zip(wanted, masks, strict=True)])


def _threshold(path: Path, ds: Dataset) -> float | None:
    """The value from which a pixel is in its segment: 1 (BINARY), half the maximum
    (FRACTIONAL); None for other types, which are not drawn."""
    kind = text(ds, "SegmentationType").upper()
    if kind == "BINARY":
        return 1.0
    if kind == "FRACTIONAL":
        maximum = as_float(ds.get("MaximumFractionalValue")) or 255.0
        return max(maximum / 2, 1.0)
    logger.info("SEG %s skipped: segmentation type %r is not drawn", path.name, kind)
    return None


def _frames_on(ds: Dataset, target: Slice) -> list[tuple[int, int]]:
    """(frame index, segment number) of every frame on the slice."""
    comparable = target.plane is not None and target.shares_frame(text(ds, "FrameOfReferenceUID"))
    wanted = []
    for index, group in enumerate(values(ds, "PerFrameFunctionalGroupsSequence")):
        derived = target.uid and target.uid in _sources(group)
        if derived or (comparable and _lies_on(group, target.plane)):
            wanted.append((index, _segment_number(group)))
    return wanted


def _sources(group: Dataset) -> set[str]:
    """The SOP instance UIDs a frame was derived from."""
    return {
        text(image, "ReferencedSOPInstanceUID")
        for derivation in values(group, "DerivationImageSequence")
        for image in values(derivation, "SourceImageSequence")
    }


def _lies_on(group: Dataset, plane: Plane | None) -> bool:
    positions = values(group, "PlanePositionSequence")
    point = floats(positions[0], "ImagePositionPatient", 3) if positions else None
    if plane is None or point is None:
        return False
    return bool(plane.distances(np.array([point]))[0] <= plane.tolerance)


def _segment_number(group: Dataset) -> int:
    identification = values(group, "SegmentIdentificationSequence")
    return int(identification[0].ReferencedSegmentNumber)


def _merged(masks: Sequence[tuple[int, Mask]]) -> list[Region]:
    """One region per segment number, its frames on the slice united; empty ones left out."""
    united: dict[int, Mask] = {}
    for number, mask in masks:
        united[number] = united[number] | mask if number in united else mask
    return [Region(number, mask) for number, mask in sorted(united.items()) if mask.any()]


# --- RTSTRUCT ----------------------------------------------------------------------------


def _rois(ds: Dataset, target: Slice) -> list[Region]:
    """One region per ROI with closed contours on the slice (mapped by the slice's plane)."""
    plane = target.plane
    if plane is None:
        return []
    frames = _frames_of_rois(ds)
    found = []
    for roi in values(ds, "ROIContourSequence"):
        number = int(roi.ReferencedROINumber)
        comparable = target.shares_frame(frames.get(number, ""))
        mask = target.blank()
        for contour in values(roi, "ContourSequence"):
            points = _closed_points(contour)
            if points is not None and _contour_on(contour, points, target, comparable):
                mask |= _filled(plane.pixels(points), target)
        if mask.any():
            found.append(Region(number, mask))
    return found


def _frames_of_rois(ds: Dataset) -> dict[int, str]:
    """ROI number -> the frame of reference its contours are in."""
    return {
        int(roi.ROINumber): text(roi, "ReferencedFrameOfReferenceUID")
        for roi in values(ds, "StructureSetROISequence")
    }


def _closed_points(contour: Dataset) -> NDArray[np.float64] | None:
    """A closed planar contour's points (N x 3, mm); None for points, open lines, or junk."""
    kind = text(contour, "ContourGeometricType").upper()
    if kind and kind != "CLOSED_PLANAR":
        return None
    data = [as_float(value) for value in values(contour, "ContourData")]
    if len(data) < 9 or len(data) % 3 or any(value is None for value in data):
        return None
    return np.array(data, dtype=np.float64).reshape(-1, 3)


def _contour_on(
    contour: Dataset, points: NDArray[np.float64], target: Slice, comparable: bool
) -> bool:
    images = values(contour, "ContourImageSequence")
    if target.uid and target.uid in {text(image, "ReferencedSOPInstanceUID") for image in images}:
        return True
    plane = target.plane
    if not comparable or plane is None:
        return False
    return bool(np.all(plane.distances(points) <= plane.tolerance))


def _filled(pixels: NDArray[np.float64], target: Slice) -> Mask:
    """The pixels inside a polygon given as (column, row) vertices, its outline included."""
    canvas = Image.new("L", (target.columns, target.rows), 0)
    vertices = [(float(column), float(row)) for column, row in pixels]
    ImageDraw.Draw(canvas).polygon(vertices, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8) > 0
