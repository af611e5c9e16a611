"""What the stand-in's toy model writes to /output, and how each server generation packs it.

The model writes `count` derived CT instances at the top level and a NIfTI mask, or, with
`nested`, two masks in sub-folders (`masks/a/mask.nii.gz`, `masks/b/mask.nii.gz`). The
packing is the real servers': generation 1 zips only the top level of /output (stored,
not compressed; sub-folders become empty folder entries, so nested files never arrive;
nothing at all gives one file `no_output_files_found.error`); generation 2 tars every
file under its base name (two `mask.nii.gz` arrive as two members of the same name) and
always adds an empty `container.log`.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import zipfile

from pydicom import dcmwrite
from pydicom.uid import generate_uid

from isdr.synthetic import SeriesSpec, make_instance

PREDICTION = "ISDR stand-in prediction"
NO_OUTPUT = "no_output_files_found.error"  # generation 1's zip of an empty /output
CONTAINER_LOG = "container.log"  # generation 2 adds it, always empty
NESTED_MASKS = ("masks/a/mask.nii.gz", "masks/b/mask.nii.gz")

File = tuple[str, bytes]  # a path under /output and its bytes


def model_files(
    count: int, shape: tuple[int, int], *, nested: bool
) -> tuple[list[File], list[str]]:
    """What the model writes: the files under /output and the SOP Instance UIDs of its
    DICOM files."""
    instances = synthetic_prediction(count, shape)
    files = [(f"{uid}.dcm", data) for uid, data in instances]
    if nested:
        files += [(path, gzip.compress(path.encode(), mtime=0)) for path in NESTED_MASKS]
    else:
        files.append(("mask.nii.gz", gzip.compress(b"stand-in mask", mtime=0)))
    return files, [uid for uid, _ in instances]


def pack(api: int, files: list[File]) -> bytes:
    """The archive a poll of a finished task answers with, as generation `api` makes it."""
    return zip_top_level(files) if api == 1 else tar_flat(files)


def build_output(
    api: int, count: int, shape: tuple[int, int], *, nested: bool = False
) -> tuple[bytes, list[str]]:
    """The archive of the model's output and the instances' SOP Instance UIDs."""
    files, uids = model_files(count, shape, nested=nested)
    return pack(api, files), uids


def synthetic_prediction(count: int, shape: tuple[int, int]) -> list[tuple[str, bytes]]:
    """`count` Part 10 files of one derived series, as (SOP Instance UID, bytes); made from
    one dataset whose UID and instance number change before each encoding."""
    rows, columns = shape
    spec = SeriesSpec(modality="CT", rows=rows, columns=columns, series_description=PREDICTION)
    ds = make_instance(spec, 0, generate_uid(), generate_uid())
    encoded = []
    for index in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        encoded.append((str(ds.SOPInstanceUID), buffer.getvalue()))
    return encoded


def zip_top_level(files: list[File]) -> bytes:
    """Generation 1: a stored zip of the top level of /output; a sub-folder is an empty
    folder entry (the server zips `os.listdir`, without walking folders)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as out:
        folders: set[str] = set()
        for name, data in files or [(NO_OUTPUT, b"")]:
            top, _, rest = name.partition("/")
            if not rest:
                out.writestr(name, data)
            elif top not in folders:
                folders.add(top)
                out.writestr(_folder_entry(top), b"")
    return buffer.getvalue()


def _folder_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(f"{name}/", time.localtime()[:6])
    info.external_attr = (0o40755 << 16) | 0x10  # a directory, as ZipFile.write makes one
    return info


def tar_flat(files: list[File]) -> bytes:
    """Generation 2: an uncompressed tar of every file under its base name, then the empty
    container.log."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as out:
        for name, data in [*files, (CONTAINER_LOG, b"")]:
            info = tarfile.TarInfo(name.rsplit("/", 1)[-1])
            info.size, info.mtime = len(data), now
            out.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
