"""Where a slice lies in patient space: its plane, and patient points mapped to its pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from isdr.pictures.attributes import floats

Vector = NDArray[np.float64]
DEFAULT_TOLERANCE = 0.5  # mm, when the slice states no thickness


@dataclass(frozen=True, eq=False)
class Plane:
    """One slice's plane: the centre of its first pixel, its directions and spacing."""

    origin: Vector
    along_row: Vector  # the column index grows along it (ImageOrientationPatient[:3])
    along_column: Vector  # the row index grows along it (ImageOrientationPatient[3:])
    row_spacing: float  # between the centres of two rows (PixelSpacing[0])
    column_spacing: float  # between the centres of two columns (PixelSpacing[1])
    tolerance: float  # half the slice thickness: how far off the plane a point still lies on it

    @property
    def normal(self) -> Vector:
        return np.cross(self.along_row, self.along_column)

    def distances(self, points: Vector) -> Vector:
        """How far each patient point (an N x 3 array, mm) lies off the plane, unsigned."""
        return np.abs((points - self.origin) @ self.normal)

    def pixels(self, points: Vector) -> Vector:
        """Patient points (N x 3, mm) as N x 2 (column, row) pixel coordinates."""
        offsets = points - self.origin
        columns = offsets @ self.along_row / self.column_spacing
        rows = offsets @ self.along_column / self.row_spacing
        return np.stack([columns, rows], axis=1)


def numbers(ds: Dataset, keyword: str, count: int) -> Vector | None:
    """A multi-valued decimal attribute as a vector, or None when absent or malformed."""
    found = floats(ds, keyword, count)
    return None if found is None else np.array(found, dtype=np.float64)


def normal_of(ds: Dataset) -> Vector | None:
    """The slice normal from ImageOrientationPatient, or None when it has none that is sound."""
    orientation = numbers(ds, "ImageOrientationPatient", 6)
    if orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 1e-6 else None


def position_of(ds: Dataset) -> float | None:
    """Where a slice lies along its normal (mm), or None without position and orientation."""
    origin = numbers(ds, "ImagePositionPatient", 3)
    normal = normal_of(ds)
    if origin is None or normal is None:
        return None
    return float(origin @ normal)


def plane_of(ds: Dataset) -> Plane | None:
    """The plane of a single-frame image, or None when its geometry is absent or malformed."""
    origin = numbers(ds, "ImagePositionPatient", 3)
    orientation = numbers(ds, "ImageOrientationPatient", 6)
    spacing = numbers(ds, "PixelSpacing", 2)
    if origin is None or orientation is None or spacing is None or normal_of(ds) is None:
        return None
    if not np.all(spacing > 0):
        return None
    return Plane(
        origin,
        orientation[:3] / np.linalg.norm(orientation[:3]),
        orientation[3:] / np.linalg.norm(orientation[3:]),
        float(spacing[0]),
        float(spacing[1]),
        _half_thickness(ds),
    )


def _half_thickness(ds: Dataset) -> float:
    thickness = numbers(ds, "SliceThickness", 1)
    if thickness is None or thickness[0] <= 0:
        return DEFAULT_TOLERANCE
    return float(thickness[0]) / 2
