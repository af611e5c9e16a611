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

from isdr.domain.fingerprint import Fingerprint, Trigger
from isdr.domain.routing import SeriesFacts
from isdr.domain.text import searched, shown


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


def failed_rules(facts: SeriesFacts, trigger: Trigger) -> tuple[str, ...]:
    """The rules of one trigger (a flat fingerprint is one) the series fails; () if none."""
    sop_classes = facts.sop_class_uids or ("",)
    rules = (
        ("modality_regex", trigger.modality_regex, (facts.modality,)),
        ("series_description_regex", trigger.series_description_regex,
         (facts.series_description,)),
        ("study_description_regex", trigger.study_description_regex, (facts.study_description,)),
        ("sop_class_uid_regex", trigger.sop_class_uid_regex, sop_classes),
        ("calling_ae_title_regex", trigger.calling_ae_title_regex, (facts.calling_ae_title,)),
    )  # fmt: skip
    failed = [f"{key} {pattern!r} not found in {_shown(values)}" for key, pattern, values in rules
              if not _found(pattern, values)]  # fmt: skip
    everything = (facts.modality, facts.series_description, facts.study_description, *sop_classes)
    if _found(trigger.exclude_regex, everything):
        failed.append(f"exclude_regex {trigger.exclude_regex!r} found")
    return tuple(failed)


def judge(facts: SeriesFacts, name: str, fingerprint: Fingerprint) -> Verdict:
    """Check every rule of one fingerprint against a series: for one with triggers, the
    series matches when it meets one of them (the study decides the rest)."""
    triggers = fingerprint.rules()
    verdicts = [failed_rules(facts, trigger) for trigger in triggers]
    if any(not failed for failed in verdicts):
        return Verdict(name, True, ())
    if not fingerprint.study_level:
        return Verdict(name, False, verdicts[0])
    failed = tuple(
        f"trigger {trigger.label!r}: {'; '.join(rules)}"
        for trigger, rules in zip(triggers, verdicts, strict=True)
    )
    return Verdict(name, False, failed)


def _shown(values: Sequence[str]) -> str:
    return repr(tuple(shown(value) for value in values))


def matching(facts: SeriesFacts, fingerprints: Mapping[str, Fingerprint]) -> list[str]:
    """The names of the fingerprints that match the series, in name order."""
    return [name for name in sorted(fingerprints) if judge(facts, name, fingerprints[name]).matched]
