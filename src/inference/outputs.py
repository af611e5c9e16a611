"""What an unpacked output is worth, in words: a pure judgement of its files.

A model that crashed on generation 2 still "finishes", with only an empty
`container.log`; generation 1 answers an empty output with `no_output_files_found.error`
and zips only the top level of the model's folder. None of these is a delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from isdr.domain.output import OutputRecord

NO_OUTPUT_MARKER = "no_output_files_found.error"  # generation 1's answer to an empty output
SHOWN = 20


@dataclass(frozen=True)
class OutputVerdict:
    """Whether the output can go on to delivery, and what to say about it."""

    usable: bool
    text: str


def judge_output(
    records: Sequence[OutputRecord],
    renamed: Sequence[tuple[str, str]],
    empty_folders: Sequence[str],
    destinations: int,
    *,
    dicom_required: bool,
) -> OutputVerdict:
    """The verdict on an unpacked output; `dicom_required` False when the fingerprint says
    an output without DICOM is expected (`dicom_output: optional`)."""
    dicom = [r for r in records if r.is_dicom]
    shape = _shape_notes(renamed, empty_folders)
    if not dicom and dicom_required:
        return OutputVerdict(False, no_dicom_reason(records) + shape)
    if not dicom:
        text = "output unpacked: no DICOM file, as the fingerprint allows (dicom_output optional)"
        return OutputVerdict(True, text + _kept(records) + shape)
    text = f"output unpacked: {len(dicom)} DICOM file(s) for {destinations} destination(s)"
    return OutputVerdict(True, text + _kept(records) + shape)


def no_dicom_reason(records: Sequence[OutputRecord]) -> str:
    """Why an output without a DICOM file is not a delivery, naming what it held."""
    names = {r.name for r in records}
    if NO_OUTPUT_MARKER in names:
        return f"the model produced no output (the server sent only {NO_OUTPUT_MARKER})"
    if not records:
        return "the model produced no output: the archive held no file"
    return f"the model produced no DICOM output: it returned only {_listed(records)}"


def _kept(records: Sequence[OutputRecord]) -> str:
    kept = [r for r in records if not r.is_dicom]
    return f"; kept in the job folder, not DICOM: {_listed(kept)}" if kept else ""


def _listed(records: Sequence[OutputRecord]) -> str:
    shown = ", ".join(f"{r.name} ({_size(r.size)})" for r in sorted(records, key=_by_name)[:SHOWN])
    more = len(records) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _by_name(record: OutputRecord) -> str:
    return record.name


def _size(size: int) -> str:
    return f"{size} bytes" if size < 10_000 else f"{size / 1e6:.1f} MB"


def _shape_notes(renamed: Sequence[tuple[str, str]], empty_folders: Sequence[str]) -> str:
    text = ""
    if renamed:
        pairs = ", ".join(f"{old} -> {new}" for old, new in renamed[:SHOWN])
        text += f"; members with the same name kept under new names: {pairs}"
    if empty_folders:
        text += (
            f"; the server dropped nested outputs: {', '.join(empty_folders[:SHOWN])} arrived "
            "empty (generation 1 zips only the top level of the model's output folder)"
        )
    return text
