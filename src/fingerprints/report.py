"""What `isdr fingerprints check` and `isdr fingerprints test` print."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from isdr.dicom.headers import read_file_sort_keys
from isdr.domain.destination import DestinationTls
from isdr.domain.fingerprint import Fingerprint, TokenUnavailable
from isdr.errors import InstanceRejected
from isdr.fingerprints.loader import Loaded
from isdr.fingerprints.match import SeriesFacts, judge


def check_lines(folder: Path, loaded: Loaded) -> list[str]:
    """One line per fingerprint file: OK, or each of its errors."""
    lines = []
    for name, fp in sorted(loaded.fingerprints.items()):
        found = problems(fp)
        lines += [f"ERROR  {name}: {problem}" for problem in found]
        if not found:
            lines.append(
                f"OK     {name}: model {fp.model_human_readable_id!r} on "
                f"{fp.inference_server_url} (API {fp.inference_server_api}), "
                f"{len(fp.scus)} destination(s)"
            )
    lines += [f"WARN   {warning}" for warning in loaded.warnings]
    lines += [f"ERROR  {error}" for error in loaded.errors]
    if not lines:
        lines.append(f"no fingerprint files (*.json) in {folder}")
    return lines


def problems(fingerprint: Fingerprint) -> list[str]:
    """What a valid fingerprint still gets wrong here: a generation-1 URL without its
    trailing slash, a token whose variable or file is missing, TLS files that are not."""
    found = []
    url = str(fingerprint.inference_server_url)
    if fingerprint.inference_server_api == 1 and not url.endswith("/"):
        found.append(
            f"inference_server_url {url} lacks its trailing slash: generation 1 adds the task "
            "uid straight after it (https://.../api/tasks/)"
        )
    try:
        fingerprint.token()
    except TokenUnavailable as exc:
        found.append(str(exc))
    for index, scu in enumerate(fingerprint.scus):
        found += [f"scus.{index}.tls: {text}" for text in _missing_tls_files(scu.tls)]
    return found


def _missing_tls_files(tls: DestinationTls | None) -> list[str]:
    if tls is None:
        return []
    named = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}
    return [
        f"{key} {value} is not a readable file"
        for key, value in named.items()
        if value is not None and not _readable(Path(value))
    ]


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


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
