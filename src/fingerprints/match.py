"""Matching: a pure function of a series' tags and the fingerprints.

The original relay's semantics: each include regex is searched (not fully matched),
case-insensitively, in its tag; `exclude_regex` vetoes the fingerprint when it is found
in any of the four tags. `calling_ae_title_regex` (new) is searched in the AE title that
sent the series. A missing tag is the empty string. A series with several SOP
classes matches a SOP class rule when any of them does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from isdr.domain.fingerprint import Fingerprint
from isdr.domain.text import searched, shown


@dataclass(frozen=True)
class SeriesFacts:
    """The tags of a series that fingerprints look at."""

    modality: str
    series_description: str
    study_description: str
    sop_class_uids: tuple[str, ...]
    calling_ae_title: str = ""  # of the association that sent the series


@dataclass(frozen=True)
class Verdict:
    """Whether one fingerprint matches, and if not, which rules failed."""

    name: str
    matched: bool
    failed_rules: tuple[str, ...]


def _found(pattern: str, values: Sequence[str]) -> bool:
    """Whether `pattern` is in one of `values`, each bounded: a hostile tag of megabytes
    must not hold the process (and receiving) in the regular expression engine."""
    compiled = re.compile(pattern, re.IGNORECASE)
    return any(compiled.search(searched(value)) for value in values)


def judge(facts: SeriesFacts, name: str, fingerprint: Fingerprint) -> Verdict:
    """Check every rule of one fingerprint against a series."""
    sop_classes = facts.sop_class_uids or ("",)
    rules = (
        ("modality_regex", fingerprint.modality_regex, (facts.modality,)),
        (
            "series_description_regex",
            fingerprint.series_description_regex,
            (facts.series_description,),
        ),
        (
            "study_description_regex",
            fingerprint.study_description_regex,
            (facts.study_description,),
        ),
        ("sop_class_uid_regex", fingerprint.sop_class_uid_regex, sop_classes),
        ("calling_ae_title_regex", fingerprint.calling_ae_title_regex, (facts.calling_ae_title,)),
    )
    failed = [f"{key} {pattern!r} not found in {_shown(values)}" for key, pattern, values in rules
              if not _found(pattern, values)]  # fmt: skip
    everything = (facts.modality, facts.series_description, facts.study_description, *sop_classes)
    if _found(fingerprint.exclude_regex, everything):
        failed.append(f"exclude_regex {fingerprint.exclude_regex!r} found")
    return Verdict(name, not failed, tuple(failed))


def _shown(values: Sequence[str]) -> str:
    return repr(tuple(shown(value) for value in values))


def matching(facts: SeriesFacts, fingerprints: Mapping[str, Fingerprint]) -> list[str]:
    """The names of the fingerprints that match the series, in name order."""
    return [name for name in sorted(fingerprints) if judge(facts, name, fingerprints[name]).matched]
