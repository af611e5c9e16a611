"""Pictures rendered from synthetic DICOM files: windows, frames, colour, bounds, overlays."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from isdr.pictures import PictureError, source
from isdr.pictures.regions import RTSTRUCT, SEG
from isdr.pictures.render import colour_of, middle, overlay, regions_on, thumbnail
from isdr.synthetic import SeriesSpec, make_instance

Pixels = NDArray[np.generic]


# --- making files ------------------------------------------------------------------------


def instance(pixels: Pixels, modality: str = "CT", **tags: object) -> Dataset:
    """A synthetic image holding `pixels`: rows x columns, frames x rows x columns (int16),
    or rows x columns x 3 (uint8 RGB)."""
    ds = make_instance(SeriesSpec(modality=modality), 0, generate_uid(), generate_uid())
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1.1"
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        _colour_pixels(ds, pixels)
    else:
        _grey_pixels(ds, pixels)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _grey_pixels(ds: Dataset, pixels: Pixels) -> None:
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.PixelData = pixels.astype("<i2").tobytes()


def _colour_pixels(ds: Dataset, pixels: Pixels) -> None:
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()


def save(ds: Dataset, folder: Path, name: str = "image.dcm") -> Path:
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def slices(folder: Path, count: int = 3, rows: int = 32, columns: int = 32) -> list[Dataset]:
    """A CT series of `count` slices 1 mm apart, all one frame of reference."""
    spec = SeriesSpec(count=count, rows=rows, columns=columns)
    study, series = generate_uid(), generate_uid()
    found = []
    for index in range(count):
        ds = make_instance(spec, index, study, series)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1.1"
        save(ds, folder, f"slice{index}.dcm")
        found.append(ds)
    return found


def _meta(ds: Dataset, sop_class: str) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


@dataclass(frozen=True)
class SegFrame:
    mask: Pixels  # rows x columns of 0/1 (or 0..255 when fractional)
    segment: int = 1
    source_uid: str = ""
    position: tuple[float, float, float] | None = None


def segmentation(frames: Sequence[SegFrame], fractional: bool = False) -> Dataset:
    ds = Dataset()
    _meta(ds, SEG)
    ds.Modality = "SEG"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1.1"
    ds.SegmentationType = "FRACTIONAL" if fractional else "BINARY"
    ds.Rows, ds.Columns = frames[0].mask.shape
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.BitsAllocated = ds.BitsStored = 8 if fractional else 1
    ds.HighBit = ds.BitsStored - 1
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([_frame_group(f) for f in frames])
    stack = np.stack([frame.mask for frame in frames]).astype(np.uint8)
    if fractional:
        ds.MaximumFractionalValue = 255
        ds.PixelData = stack.tobytes()
    else:
        ds.PixelData = pack_bits(stack)
    return ds


def _frame_group(frame: SegFrame) -> Dataset:
    group = Dataset()
    identification = Dataset()
    identification.ReferencedSegmentNumber = frame.segment
    group.SegmentIdentificationSequence = DicomSequence([identification])
    if frame.source_uid:
        image = Dataset()
        image.ReferencedSOPInstanceUID = frame.source_uid
        derivation = Dataset()
        derivation.SourceImageSequence = DicomSequence([image])
        group.DerivationImageSequence = DicomSequence([derivation])
    if frame.position is not None:
        position = Dataset()
        position.ImagePositionPatient = list(frame.position)
        group.PlanePositionSequence = DicomSequence([position])
    return group


def structure_set(contours: Sequence[tuple[int, list[float], str]]) -> Dataset:
    """An RTSTRUCT of closed contours: (ROI number, x y z points in mm, image UID or '')."""
    ds = Dataset()
    _meta(ds, RTSTRUCT)
    ds.Modality = "RTSTRUCT"
    rois = []
    for number, points, image_uid in contours:
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(points) // 3
        contour.ContourData = points
        if image_uid:
            image = Dataset()
            image.ReferencedSOPInstanceUID = image_uid
            contour.ContourImageSequence = DicomSequence([image])
        roi = Dataset()
        roi.ReferencedROINumber = number
        roi.ContourSequence = DicomSequence([contour])
        rois.append(roi)
    ds.ROIContourSequence = DicomSequence(rois)
    return ds


def square(mm_x: tuple[float, float], mm_y: tuple[float, float], z: float) -> list[float]:
    (x0, x1), (y0, y1) = mm_x, mm_y
    return [x0, y0, z, x1, y0, z, x1, y1, z, x0, y1, z]


def decoded(png: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


def shades(picture: Image.Image) -> list[int]:
    return [int(value) for value in np.asarray(picture).ravel()]


def all_grey(picture: Image.Image) -> bool:
    red, green, blue = np.moveaxis(np.asarray(picture.convert("RGB")), 2, 0)
    return bool(np.all(red == green) and np.all(green == blue))


def is_grey(pixel: tuple[int, ...]) -> bool:
    return pixel[0] == pixel[1] == pixel[2]


def leans_to(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    """A pixel tinted by `colour`: its channels ordered as the colour's are."""
    order = np.argsort(colour)
    return bool(pixel[order[2]] > pixel[order[0]] + 20)


# --- thumbnails --------------------------------------------------------------------------


def test_ct_without_a_window_is_shown_in_a_soft_tissue_window(tmp_path: Path) -> None:
    stored = np.array([[0, 1024 + 41, 1024 + 240, 2048]], dtype=np.int16)  # HU -1024 41 240 1024
    path = save(instance(stored, RescaleIntercept=-1024, RescaleSlope=1), tmp_path)
    picture = decoded(thumbnail(path))
    assert picture.mode == "L"
    assert shades(picture) == [0, 128, 255, 255]


def test_ct_with_a_window_is_shown_in_its_own_first_window(tmp_path: Path) -> None:
    stored = np.array([[-100, 1, 50]], dtype=np.int16)
    ds = instance(stored, WindowCenter=[0, 40], WindowWidth=[100, 400])
    assert shades(decoded(thumbnail(save(ds, tmp_path)))) == [0, 130, 255]


def test_mr_is_shown_between_its_1st_and_99th_percentile(tmp_path: Path) -> None:
    stored = np.arange(100 * 100, dtype=np.int16).reshape(100, 100) // 10  # 0 .. 999
    stored[0, 0] = 30000  # one bright outlier does not darken the rest
    picture = decoded(thumbnail(save(instance(stored, "MR"), tmp_path), size=100))
    shades = np.asarray(picture)
    assert shades[50, 0] in range(120, 136)  # the median is mid grey
    assert shades[0, 1] == 0 and shades[99, 99] == 255


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = np.array([[-1024, 41, 1024]], dtype=np.int16)
    path = save(instance(stored, PhotometricInterpretation="MONOCHROME1"), tmp_path)
    assert shades(decoded(thumbnail(path))) == [255, 127, 0]


def test_a_multi_frame_image_is_shown_by_its_middle_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 8), value, dtype=np.int16) for value in (-1000, 41, 1000)])
    picture = decoded(thumbnail(save(instance(frames), tmp_path)))
    assert set(shades(picture)) == {128}


def test_an_rgb_image_is_shown_in_its_colours(tmp_path: Path) -> None:
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[:, 3:, 2] = 100
    picture = decoded(thumbnail(save(instance(pixels, "XC"), tmp_path)))
    assert picture.mode == "RGB"
    assert picture.getpixel((0, 0)) == (200, 0, 0)
    assert picture.getpixel((5, 3)) == (200, 0, 100)


def test_a_thumbnail_fits_its_size_keeping_the_aspect_and_is_never_enlarged(
    tmp_path: Path,
) -> None:
    wide = save(instance(np.zeros((100, 400), dtype=np.int16)), tmp_path, "wide.dcm")
    small = save(instance(np.zeros((20, 30), dtype=np.int16)), tmp_path, "small.dcm")
    assert decoded(thumbnail(wide, size=200)).size == (200, 50)
    assert decoded(thumbnail(small, size=200)).size == (30, 20)


# --- refusals ----------------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(source, "iter_pixels", refuse)


@pytest.mark.usefixtures("no_decoding")
def test_a_frame_over_4096_squared_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    ds = instance(np.zeros((2, 2), dtype=np.int16), Rows=4097, Columns=4096)
    with pytest.raises(PictureError, match=r"image\.dcm is too large .* 4097 x 4096"):
        thumbnail(save(ds, tmp_path))


@pytest.mark.usefixtures("no_decoding")
def test_frames_over_512_mib_decoded_are_refused_before_decoding(tmp_path: Path) -> None:
    ds = instance(np.zeros((2, 2), dtype=np.int16), Rows=4096, Columns=4096, NumberOfFrames=17)
    with pytest.raises(PictureError, match="544 MiB decoded"):
        thumbnail(save(ds, tmp_path))


def test_a_file_that_is_not_dicom_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n" * 20)
    with pytest.raises(PictureError, match=r"notes\.txt cannot be read as DICOM"):
        thumbnail(path)


def test_a_missing_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(PictureError, match=r"gone\.dcm cannot be read"):
        thumbnail(tmp_path / "gone.dcm")


def test_an_image_without_pixel_data_is_refused(tmp_path: Path) -> None:
    ds = instance(np.zeros((2, 2), dtype=np.int16))
    del ds.PixelData
    with pytest.raises(PictureError, match=r"image\.dcm has no pixel data"):
        thumbnail(save(ds, tmp_path))


def test_a_dataset_that_is_no_image_is_refused(tmp_path: Path) -> None:
    ds = structure_set([])
    with pytest.raises(PictureError, match="is not an image: it has no Rows, Columns"):
        thumbnail(save(ds, tmp_path, "rt.dcm"))


def test_a_compression_without_a_decoder_here_is_refused_in_words(tmp_path: Path) -> None:
    ds = instance(np.zeros((2, 2), dtype=np.int16))
    # JPEG Lossless: neither Pillow nor pyjpegls (highdicom's, which decodes JPEG-LS) can.
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not really JPEG Lossless"])
    with pytest.raises(PictureError, match=r"compressed as JPEG Lossless.* cannot be decoded"):
        thumbnail(save(ds, tmp_path))


def test_truncated_pixel_data_is_a_picture_error(tmp_path: Path) -> None:
    ds = instance(np.zeros((8, 8), dtype=np.int16))
    ds.PixelData = b"\x00\x01" * 5
    with pytest.raises(PictureError, match="pixel data cannot be decoded"):
        thumbnail(save(ds, tmp_path))


def test_a_size_below_one_pixel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PictureError, match="at least 1 pixel"):
        thumbnail(tmp_path / "any.dcm", size=0)


# --- the middle slice --------------------------------------------------------------------


def test_the_middle_slice_is_found_by_position_even_when_instance_numbers_disagree(
    tmp_path: Path,
) -> None:
    paths = []
    for name, z, number in [("a", 4.0, 1), ("b", 0.0, 2), ("c", 2.0, 5), ("d", 3.0, 3)]:
        ds = instance(np.zeros((2, 2), dtype=np.int16), InstanceNumber=number)
        ds.ImagePositionPatient = [0.0, 0.0, z]
        paths.append(save(ds, tmp_path, f"{name}.dcm"))
    paths.append(save(instance(np.zeros((2, 2), dtype=np.int16)), tmp_path, "e.dcm"))  # z=0
    assert middle(paths).name == "c.dcm"  # z: 0 0 2 3 4


def test_without_positions_the_middle_slice_is_found_by_instance_number(tmp_path: Path) -> None:
    paths = []
    for name, number in [("a", 9), ("b", 1), ("c", 5)]:
        ds = instance(np.zeros((2, 2), dtype=np.int16), InstanceNumber=number)
        del ds.ImagePositionPatient
        paths.append(save(ds, tmp_path, f"{name}.dcm"))
    assert middle(paths).name == "c.dcm"


def test_a_series_without_files_has_no_middle() -> None:
    with pytest.raises(PictureError, match="without files"):
        middle([])


# --- overlays ----------------------------------------------------------------------------


def test_a_seg_is_drawn_in_its_segment_colour_on_its_own_slice_only(tmp_path: Path) -> None:
    series = slices(tmp_path)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:16, 10:20] = 1
    seg = segmentation([SegFrame(mask, segment=2, source_uid=series[1].SOPInstanceUID)])
    outputs = [save(seg, tmp_path, "seg.dcm")]

    on = decoded(overlay(tmp_path / "slice1.dcm", outputs))
    off = decoded(overlay(tmp_path / "slice0.dcm", outputs))

    assert on.mode == "RGB" and on.size == (32, 32)
    assert all(leans_to(on.getpixel((x, y)), colour_of(2)) for x in range(10, 20) for y in (8, 15))
    assert on.getpixel((10, 8)) == colour_of(2)  # the outline is opaque
    assert is_grey(on.getpixel((5, 5))) and is_grey(on.getpixel((25, 12)))
    assert all_grey(off)
    assert regions_on(tmp_path / "slice1.dcm", outputs) == 1
    assert regions_on(tmp_path / "slice0.dcm", outputs) == 0


def test_a_seg_frame_without_a_source_is_placed_by_its_position(tmp_path: Path) -> None:
    slices(tmp_path)
    mask = np.ones((32, 32), dtype=np.uint8)
    frames = [SegFrame(mask, segment=1, position=(0.0, 0.0, 2.3))]  # slice2 is at z = 2
    outputs = [save(segmentation(frames), tmp_path, "seg.dcm")]
    assert regions_on(tmp_path / "slice2.dcm", outputs) == 1
    assert regions_on(tmp_path / "slice1.dcm", outputs) == 0


def test_a_fractional_seg_is_drawn_where_it_reaches_half_its_maximum(tmp_path: Path) -> None:
    series = slices(tmp_path)
    fractions = np.zeros((32, 32), dtype=np.uint8)
    fractions[0:4, :] = 100  # below half of 255
    fractions[20:24, :] = 200
    uid = series[0].SOPInstanceUID
    seg = segmentation([SegFrame(fractions, source_uid=uid)], fractional=True)
    picture = decoded(overlay(tmp_path / "slice0.dcm", [save(seg, tmp_path, "seg.dcm")]))
    assert is_grey(picture.getpixel((16, 2)))
    assert leans_to(picture.getpixel((16, 22)), colour_of(1))


def test_a_seg_of_another_frame_size_is_skipped(tmp_path: Path) -> None:
    series = slices(tmp_path)
    seg = segmentation([SegFrame(np.ones((16, 16)), source_uid=series[1].SOPInstanceUID)])
    outputs = [save(seg, tmp_path, "seg.dcm")]
    assert regions_on(tmp_path / "slice1.dcm", outputs) == 0
    picture = decoded(overlay(tmp_path / "slice1.dcm", outputs))
    assert all_grey(picture)


def test_outputs_that_are_no_seg_nor_rtstruct_or_are_unreadable_are_left_out(
    tmp_path: Path,
) -> None:
    slices(tmp_path)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 10)
    outputs = [tmp_path / "slice0.dcm", junk]
    assert regions_on(tmp_path / "slice1.dcm", outputs) == 0
    assert decoded(overlay(tmp_path / "slice1.dcm", outputs)).mode == "RGB"


@pytest.fixture
def oblong(tmp_path: Path) -> Path:
    """A 40 x 64 slice at z = 10 whose rows are 2 mm apart and columns 1 mm: pixel (column c,
    row r) lies at x = -100 + c, y = -50 + 2 r."""
    ds = instance(np.zeros((40, 64), dtype=np.int16))
    ds.ImagePositionPatient = [-100.0, -50.0, 10.0]
    ds.PixelSpacing = [2.0, 1.0]
    ds.SliceThickness = 1.0
    return save(ds, tmp_path, "oblong.dcm")


def test_an_rtstruct_contour_is_drawn_where_its_points_map_on_the_slice(
    tmp_path: Path, oblong: Path
) -> None:
    rt = structure_set([(3, square((-80, -60), (-30, -10), 10.2), "")])  # columns 20-40, rows 10-20
    outputs = [save(rt, tmp_path, "rt.dcm")]
    picture = decoded(overlay(oblong, outputs))
    assert leans_to(picture.getpixel((30, 15)), colour_of(3))
    assert picture.getpixel((20, 15)) == colour_of(3)  # on the outline
    assert is_grey(picture.getpixel((30, 30)))
    assert is_grey(picture.getpixel((15, 30)))  # where swapped spacings would put it
    assert regions_on(oblong, outputs) == 1


def test_an_rtstruct_contour_off_the_plane_is_drawn_only_when_it_names_the_slice(
    tmp_path: Path, oblong: Path
) -> None:
    uid = str(source.header(oblong).SOPInstanceUID)
    far = square((-80, -60), (-30, -10), 12.0)
    apart = [save(structure_set([(1, far, "")]), tmp_path, "apart.dcm")]
    named = [save(structure_set([(1, far, uid)]), tmp_path, "named.dcm")]
    assert regions_on(oblong, apart) == 0
    assert regions_on(oblong, named) == 1


def test_a_file_gone_is_said_without_its_path_which_holds_the_patient_id(tmp_path: Path) -> None:
    gone = tmp_path / "DOE_JOHN_123456" / "CT" / "1.2.3.dcm"
    with pytest.raises(PictureError) as refused:
        thumbnail(gone)
    assert "DOE_JOHN" not in str(refused.value) and "No such file" in str(refused.value)
