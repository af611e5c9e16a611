"""De-identify a job's instance files into a folder of copies (the originals stay as they
are), leaving out those whose pixels may show identity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from isdr.deid.profile import deidentify, pixel_risk
from isdr.deid.pseudonyms import Pseudonyms
from isdr.deid.reidentify import Refused, check, own_uids, reidentify
from isdr.domain.deid import Deidentify


@dataclass(frozen=True)
class Copy:
    """One de-identified copy, with the names it goes into the archive under."""

    source: Path
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str


def deidentify_files(
    sources: list[Path], folder: Path, names: Pseudonyms, options: Deidentify
) -> list[Copy]:
    """A de-identified copy of each file in `folder`; those left out are said in
    `names.left_out` (never with a patient's data: by their place in the job)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for number, source in enumerate(sources, 1):
        dataset = dcmread(source)
        risk = pixel_risk(dataset)
        if risk is not None and not options.allow_burned_in:
            names.left_out.append(f"instance {number} of {len(sources)}: {risk}")
            continue
        deidentify(dataset, names, options)
        target = folder / f"{number:06d}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        copies.append(Copy(source, target, str(dataset.SOPInstanceUID),
                           str(dataset.SOPClassUID), str(dataset.SeriesInstanceUID)))  # fmt: skip
    return copies


def reidentify_files(paths: list[Path], names: Pseudonyms) -> list[str]:
    """Put every DICOM file of an output back on the job's patient and study, in place;
    a file refused is removed. What was refused, in words (its name and why).

    The headers are checked first, all together: an object may reference another object
    of the output, but not one that is itself refused.
    """
    headers, refused = {}, []
    for path in paths:
        try:
            headers[path] = dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # not DICOM: kept as it is
        except Exception:  # noqa: BLE001 (a broken file of the output: refused, not sent)
            refused.append(_refuse(path, "it cannot be read to put it back on the patient"))
    accepted, back = dict(headers), names.originals()
    while True:
        own = set().union(*(own_uids(ds) for ds in accepted.values())) if accepted else set()
        out = {path: _reason(ds, names, own, back) for path, ds in accepted.items()}
        out = {path: reason for path, reason in out.items() if reason}
        if not out:
            break
        for path, reason in out.items():
            del accepted[path]
            refused.append(_refuse(path, reason))
    for path in accepted:
        try:
            dataset = dcmread(path)
            reidentify(dataset, names, own, back)
            dataset.save_as(path, enforce_file_format=False)
        except Exception as exc:  # noqa: BLE001 (this file is not sent; the others go on)
            refused.append(_refuse(path, str(exc) if isinstance(exc, Refused) else
                                   "it could not be put back on the patient"))  # fmt: skip
    return refused


def _reason(dataset: Dataset, names: Pseudonyms, own: set[str], back: dict[str, str]) -> str:
    try:
        check(dataset, names, own, back)
    except Refused as exc:
        return str(exc)
    return ""


def _refuse(path: Path, reason: str) -> str:
    path.unlink(missing_ok=True)
    return f"{path.name}: {reason}"
