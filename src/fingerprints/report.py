"""What `isdr fingerprints check` and `isdr fingerprints test` print."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from isdr.dicom.headers import read_file_sort_keys
from isdr.domain.destination import Destination, DestinationTls
from isdr.domain.fingerprint import MAX_WAIT_LIMIT, Fingerprint, TokenUnavailable
from isdr.domain.keys import SortKeys
from isdr.domain.routing import GiveUp, OpenRound, SeriesFacts, Take, slice_facts
from isdr.domain.servers import Server
from isdr.domain.stack import SliceFacts
from isdr.errors import InstanceRejected
from isdr.fingerprints.decide import decide
from isdr.fingerprints.loader import Loaded
from isdr.fingerprints.match import failed_rules, judge


def check_lines(folder: Path, loaded: Loaded) -> list[str]:
    """One line per fingerprint file: OK, or each of its errors."""
    lines = []
    for name, fp in sorted(loaded.fingerprints.items()):
        found = problems(fp)
        lines += [f"ERROR  {name}: {problem}" for problem in found]
        if not found:
            triggers = ", ".join(repr(t.label) for t in fp.triggers)
            api = "API of each server" if fp.pooled else f"API {fp.inference_server_api}"
            lines.append(
                f"OK     {name}: model {fp.model_human_readable_id!r} on "
                f"{fp.server_label} ({api}), "
                f"{len(fp.scus)} destination(s)" + (f", triggers {triggers}" if triggers else "")
            )
    lines += [f"WARN   {warning}" for warning in loaded.warnings]
    lines += [f"ERROR  {error}" for error in loaded.errors]
    if not lines:
        lines.append(f"no fingerprint files (*.json) in {folder}")
    return lines


def server_problems(server: Server) -> list[str]:
    """What a server of SERVERS_FILE gets wrong here, as for a fingerprint's server."""
    found = _slash(str(server.url), server.api, f"the server {server.name}'s url")
    try:
        server.token_value()
    except TokenUnavailable as exc:
        found.append(f"the server {server.name}: {exc}")
    return found


def _slash(url: str, api: int, key: str) -> list[str]:
    if api == 1 and not url.endswith("/"):
        return [
            f"{key} {url} lacks its trailing slash: generation 1 adds the task uid straight "
            "after it (https://.../api/tasks/)"
        ]
    return []


def problems(fingerprint: Fingerprint) -> list[str]:
    """What a valid fingerprint still gets wrong here: a generation-1 URL without its
    trailing slash, a token whose variable or file is missing, TLS files that are not."""
    found = []
    if fingerprint.inference_server_url is not None:
        url = str(fingerprint.inference_server_url)
        found += _slash(url, fingerprint.inference_server_api, "inference_server_url")
    try:
        fingerprint.token()
    except TokenUnavailable as exc:
        found.append(str(exc))
    for index, scu in enumerate(fingerprint.scus):
        tls = scu.tls if isinstance(scu, Destination) else None
        found += [f"scus.{index}.tls: {text}" for text in _missing_tls_files(tls)]
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
    study: tuple[str, str] = ("", "")
    modality: str = ""
    series_description: str = ""
    study_description: str = ""
    sop_classes: set[str] = field(default_factory=set)
    slices: list[SliceFacts] = field(default_factory=list)

    def facts(self) -> SeriesFacts:
        return SeriesFacts(self.modality, self.series_description, self.study_description,
                           tuple(sorted(self.sop_classes)))  # fmt: skip


_LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # every file counts as settled...
_LATER = _LONG_AGO + timedelta(seconds=MAX_WAIT_LIMIT + 1)  # ...and waited for in vain


def test_lines(path: Path, fingerprints: Mapping[str, Fingerprint]) -> list[str]:
    """Per study found under `path`: per series, which flat fingerprints match it and why
    not; per fingerprint with triggers, which series met which trigger, and the verdict."""
    seen: dict[str, _SeriesSeen] = defaultdict(_SeriesSeen)
    lines: list[str] = []
    for file in _files(path):
        try:
            keys = read_file_sort_keys(file)
        except InstanceRejected as exc:
            lines.append(f"skipped {file}: {exc.reason}")
            continue
        _add(seen[keys.series_instance_uid], keys)
    studies: dict[tuple[str, str], list[str]] = defaultdict(list)
    for uid, entry in sorted(seen.items()):
        studies[entry.study].append(uid)
    for (_, study_uid), uids in studies.items():
        lines.append(f"study {study_uid} ({len(uids)} series)")
        lines += _study_lines(uids, seen, fingerprints)
    if not seen:
        lines.append(f"no DICOM files under {path}")
    return lines


def _add(entry: _SeriesSeen, keys: SortKeys) -> None:
    entry.study = (keys.patient_id, keys.study_instance_uid)
    entry.modality, entry.series_description = keys.modality, keys.series_description
    entry.study_description = keys.study_description
    entry.sop_classes.add(keys.sop_class_uid)
    entry.slices.append(
        slice_facts(keys.image_position, keys.image_orientation,
                    keys.images_in_acquisition, keys.temporal_positions)
    )  # fmt: skip


def _study_lines(
    uids: list[str], seen: Mapping[str, _SeriesSeen], fingerprints: Mapping[str, Fingerprint]
) -> list[str]:
    rounds = [
        OpenRound(number, seen[uid].facts(), len(seen[uid].slices), _LONG_AGO, _LONG_AGO,
                  slices=tuple(seen[uid].slices))
        for number, uid in enumerate(uids, start=1)
    ]  # fmt: skip
    return explain(rounds, uids, fingerprints)


def explain(
    rounds: list[OpenRound], uids: list[str], fingerprints: Mapping[str, Fingerprint]
) -> list[str]:
    """The lines of `isdr fingerprints test` for one study's rounds (each with its
    SeriesInstanceUID): flat verdicts per series, then each fingerprint with triggers, as
    the relay would decide once it had waited as long as it may. Time plays no part: every
    round counts as settled."""
    rounds = [replace(r, first_received_at=_LONG_AGO, last_received_at=_LONG_AGO) for r in rounds]
    lines = []
    for round_, uid in zip(rounds, uids, strict=True):
        facts = round_.facts
        lines.append(f"  series {round_.id}: {uid} ({facts.modality}, "
                     f"{facts.series_description!r}, study {facts.study_description!r}, "
                     f"{round_.instance_count} file(s))")  # fmt: skip
        for name, fingerprint in sorted(fingerprints.items()):
            if not fingerprint.study_level:
                lines += _flat_lines(round_, name, fingerprint)
    for name, fingerprint in sorted(fingerprints.items()):
        if fingerprint.study_level:
            lines += _study_level_lines(rounds, name, fingerprint)
    return lines


def _flat_lines(round_: OpenRound, name: str, fingerprint: Fingerprint) -> list[str]:
    verdict = judge(round_.facts, name, fingerprint)
    if not verdict.matched:
        return [f"    no     {name}: " + "; ".join(verdict.failed_rules)]
    [decision] = decide([round_], name, fingerprint, _LATER, 0.0)
    if isinstance(decision, GiveUp):
        return [f"    no     {name}: {decision.reason}"]
    return [f"    MATCH  {name}: model {fingerprint.model_human_readable_id!r}"]


def _study_level_lines(rounds: list[OpenRound], name: str, fingerprint: Fingerprint) -> list[str]:
    """Which series met which trigger (each goes to the first it meets), and the verdict
    once the relay had waited for the rest as long as the fingerprint lets it."""
    lines = [f"  {name}: model {fingerprint.model_human_readable_id!r}, "
             f"{len(fingerprint.triggers)} trigger(s)"]  # fmt: skip
    taken: set[int] = set()
    for trigger in fingerprint.triggers:
        meeting = [r.id for r in rounds if r.id not in taken and not failed_rules(r.facts, trigger)]
        taken.update(meeting)
        found = ", ".join(f"series {number}" for number in meeting) or "no series"
        lines.append(f"    trigger {trigger.label!r}: {found}")
    decisions = decide(rounds, name, fingerprint, _LATER, 0.0)
    if not decisions:
        return [*lines, f"    no     {name}: no series meets any trigger"]
    for decision in decisions:
        if isinstance(decision, Take):
            held = ", ".join(f"{m.trigger} = series {m.round_id}" for m in decision.members)
            lines.append(f"    MATCH  {name}: one job holding {held}")
        elif isinstance(decision, GiveUp):
            lines.append(f"    no     {name}: {decision.reason}")
    return lines


def _files(path: Path) -> Iterable[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())
