"""Matching keeps the original relay's semantics: table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from isdr.domain.fingerprint import Fingerprint
from isdr.fingerprints.match import SeriesFacts, judge, matching

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
THORAX = SeriesFacts("CT", "Thorax 3mm", "CT THORAX", (CT,))


def fingerprint(**rules: Any) -> Fingerprint:
    return Fingerprint.model_validate(
        {"inference_server_url": "https://s/api/tasks/", "model_human_readable_id": "m", **rules}
    )


@pytest.mark.parametrize(
    ("rules", "facts", "matched"),
    [
        ({}, THORAX, True),  # every include defaults to "" (any), exclude to "a^" (none)
        ({"modality_regex": "CT"}, THORAX, True),
        ({"modality_regex": "ct"}, THORAX, True),  # case-insensitive
        ({"modality_regex": "MR"}, THORAX, False),
        ({"series_description_regex": "thorax"}, THORAX, True),
        ({"series_description_regex": "3mm$"}, THORAX, True),  # searched, not fully matched
        ({"series_description_regex": "^3mm"}, THORAX, False),
        ({"study_description_regex": "THORAX"}, THORAX, True),
        ({"study_description_regex": "HEAD"}, THORAX, False),
        ({"sop_class_uid_regex": r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.2$"}, THORAX, True),
        ({"sop_class_uid_regex": r"\.4$"}, THORAX, False),
        ({"exclude_regex": "3mm"}, THORAX, False),  # veto from the series description
        ({"exclude_regex": "^CT$"}, THORAX, False),  # veto from the modality
        ({"exclude_regex": "THORAX"}, THORAX, False),  # veto from the study description
        ({"exclude_regex": r"4\.1\.1\.2"}, THORAX, False),  # veto from the SOP class
        ({"exclude_regex": "contrast"}, THORAX, True),
        ({"series_description_regex": "x"}, SeriesFacts("CT", "", "", (CT,)), False),
        ({"series_description_regex": "^$"}, SeriesFacts("CT", "", "", (CT,)), True),
        ({"sop_class_uid_regex": r"\.4$"}, SeriesFacts("MR", "", "", (CT, MR)), True),
        ({"modality_regex": "CT|MR"}, SeriesFacts("MR", "", "", ()), True),
    ],
)
def test_matching_table(rules: dict[str, str], facts: SeriesFacts, matched: bool) -> None:
    assert judge(facts, "fp.json", fingerprint(**rules)).matched is matched


def test_a_failed_rule_is_named() -> None:
    verdict = judge(THORAX, "fp.json", fingerprint(modality_regex="MR", exclude_regex="Thorax"))
    assert not verdict.matched
    assert [rule.split()[0] for rule in verdict.failed_rules] == ["modality_regex", "exclude_regex"]


def test_every_matching_fingerprint_counts_in_name_order() -> None:
    fingerprints = {
        "b.json": fingerprint(modality_regex="CT"),
        "a.json": fingerprint(series_description_regex="thorax"),
        "c.json": fingerprint(modality_regex="MR"),
    }
    assert matching(THORAX, fingerprints) == ["a.json", "b.json"]


def test_calling_ae_title_regex_routes_by_the_sender() -> None:
    from_ct1 = SeriesFacts("CT", "Thorax", "CT THORAX", (CT,), calling_ae_title="RADIOLOGY_CT1")
    radiology = fingerprint(calling_ae_title_regex="^RADIOLOGY_")
    oncology = fingerprint(calling_ae_title_regex="^ONCO_")
    assert judge(from_ct1, "radiology", radiology).matched
    verdict = judge(from_ct1, "oncology", oncology)
    assert not verdict.matched and "calling_ae_title_regex" in verdict.failed_rules[0]


def test_a_pattern_is_searched_in_the_first_thousand_characters_of_a_tag_only() -> None:
    huge = SeriesFacts("CT", "x" * 5000 + "lung", "", ())
    assert not matching(huge, {"a.json": fingerprint(series_description_regex="lung")})
    near = SeriesFacts("CT", "x" * 100 + "lung", "", ())
    assert matching(near, {"a.json": fingerprint(series_description_regex="lung")}) == ["a.json"]


def test_a_failed_rule_shows_a_huge_value_cut() -> None:
    facts = SeriesFacts("CT", "y" * 4_000_000, "", ())
    verdict = judge(facts, "a.json", fingerprint(series_description_regex="lung"))
    [rule] = verdict.failed_rules
    assert len(rule) < 300 and "(4000000 characters)" in rule
