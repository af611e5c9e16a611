"""What `isdr fingerprints check` and `isdr fingerprints test` print."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from isdr.dicom.headers import read_file_sort_keys
from isdr.domain.fingerprint import Fingerprint
from isdr.errors import InstanceRejected
from isdr.fingerprints.loader import Loaded
from isdr.fingerprints.match import SeriesFacts, judge


def check_lines(folder: Path, loaded: Loaded) -> list[str]:
    """One line per fingerprint file: OK, or each of its errors."""
    lines = [
        f"OK     {name}: model {fp.model_human_readable_id!r} on {fp.inference_server_url} "
        f"(API {fp.inference_server_api}), {len(fp.scus)} destination(s)"
        for name, fp in sorted(loaded.fingerprints.items())
    ]
    lines += [f"WARN   {warning}" for warning in loaded.warnings]
    lines += [f"ERROR  {error}" for error in loaded.errors]
    if not lines:
        lines.append(f"no fingerprint files (*.json) in {folder}")
    return lines


@dataclass
class _SeriesSeen:
    modality: str = ""
    series_description: str = ""
    study_description: str = ""
    sop_classes: set[str] = field(default_factory=set)
    files: int = 0


def test_lines(path: Path, fingerprints: Mapping[str, Fingerprint]) -> list[str]:
    """Per series found under `path`, per fingerprint: does it match, and if not, why."""
    seen: dict[str, _SeriesSeen] = defaultdict(_SeriesSeen)
    lines: list[str] = []
    for file in _files(path):
        try:
            keys = read_file_sort_keys(file)
        except InstanceRejected as exc:
            lines.append(f"skipped {file}: {exc.reason}")
            continue
        entry = seen[keys.series_instance_uid]
        entry.modality, entry.series_description = keys.modality, keys.series_description
        entry.study_description = keys.study_description
        entry.sop_classes.add(keys.sop_class_uid)
        entry.files += 1
    for uid, entry in sorted(seen.items()):
        facts = SeriesFacts(entry.modality, entry.series_description, entry.study_description,
                            tuple(sorted(entry.sop_classes)))  # fmt: skip
        lines.append(f"series {uid} ({entry.modality}, {entry.series_description!r}, "
                     f"study {entry.study_description!r}, {entry.files} file(s))")  # fmt: skip
        for name, fingerprint in sorted(fingerprints.items()):
            verdict = judge(facts, name, fingerprint)
            if verdict.matched:
                lines.append(f"  MATCH  {name}: model {fingerprint.model_human_readable_id!r}")
            else:
                lines.append(f"  no     {name}: " + "; ".join(verdict.failed_rules))
    if not seen:
        lines.append(f"no DICOM files under {path}")
    return lines


def _files(path: Path) -> Iterable[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())
