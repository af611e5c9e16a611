"""From decoded pixels to 8-bit values a screen shows: rescale, a window, MONOCHROME1 inverted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from isdr.pictures.attributes import first_float, text
from isdr.pictures.source import Frame

Bytes = NDArray[np.uint8]
Values = NDArray[np.float32]


@dataclass(frozen=True)
class Window:
    """The range of values spread over black (lower) to white (upper)."""

    lower: float
    upper: float

    @classmethod
    def centred(cls, center: float, width: float) -> Window:
        return cls(center - width / 2, center + width / 2)


SOFT_TISSUE = Window.centred(40.0, 400.0)  # CT, in Hounsfield units


def grey(frame: Frame, ds: Dataset) -> Bytes:
    """A single-sample frame as 8-bit grey, windowed as suits the image."""
    rescaled = rescale(frame, ds)
    shown = to_bytes(rescaled, window_for(ds, rescaled))
    if text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        inverted: Bytes = np.subtract(255, shown, dtype=np.uint8)
        return inverted
    return shown


def rescale(frame: Frame, ds: Dataset) -> Values:
    """Stored values to modality values (Hounsfield units for CT): slope and intercept."""
    slope = first_float(ds, "RescaleSlope")
    intercept = first_float(ds, "RescaleIntercept")
    values = frame.astype(np.float32)
    if slope is not None and slope != 0:
        values *= np.float32(slope)
    if intercept is not None:
        values += np.float32(intercept)
    return values


def window_for(ds: Dataset, rescaled: Values) -> Window:
    """The file's first window; else soft tissue for CT; else the 1st to 99th percentile."""
    center = first_float(ds, "WindowCenter")
    width = first_float(ds, "WindowWidth")
    if center is not None and width is not None and width > 0:
        return Window.centred(center, width)
    if text(ds, "Modality").upper() == "CT":
        return SOFT_TISSUE
    return percentiles(rescaled)


def percentiles(rescaled: Values) -> Window:
    """The 1st to 99th percentile, or the whole range when they coincide."""
    lower, upper = np.percentile(rescaled, [1.0, 99.0])
    if upper <= lower:
        lower, upper = rescaled.min(), rescaled.max()
    return Window(float(lower), float(upper))


def to_bytes(rescaled: Values, window: Window) -> Bytes:
    """Values below the window black, above it white, linear between (all black if empty)."""
    span = window.upper - window.lower
    if span <= 0:
        return np.zeros(rescaled.shape, dtype=np.uint8)
    scaled = (rescaled - np.float32(window.lower)) * np.float32(255.0 / span)
    return _clipped(scaled)


def colour(frame: Frame, ds: Dataset) -> Bytes:
    """A three-sample frame (already RGB: pydicom converts YBR) as 8 bits per sample."""
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    top = float(2**stored - 1)
    scaled = frame.astype(np.float32) * np.float32(255.0 / top)
    return _clipped(scaled)


def _clipped(scaled: Values) -> Bytes:
    shown: Bytes = np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
    return shown
