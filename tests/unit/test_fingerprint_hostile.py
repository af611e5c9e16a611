"""Hostile fingerprint files: each gets a clear error, and nothing else is harmed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isdr.domain.fingerprint import Fingerprint
from isdr.fingerprints.loader import MAX_BYTES, FingerprintError, load_file, load_folder
from isdr.fingerprints.regex_guard import risky, too_slow
from tests.unit.test_fingerprint_loader import ORIGINAL, errors_of, write


def test_a_catastrophic_regex_is_refused_at_load_naming_field_and_line(tmp_path: Path) -> None:
    body = json.dumps({**ORIGINAL, "series_description_regex": "(a+)+$"}, indent=2)
    [error] = errors_of(write(tmp_path, "slow.json", body))
    assert error.field == "series_description_regex" and error.line == 3
    assert "catastrophic backtracking" in error.message


def test_a_group_with_a_quantifier_that_is_fast_loads(tmp_path: Path) -> None:
    body = json.dumps({**ORIGINAL, "series_description_regex": "(thorax )+lung"})
    assert isinstance(load_file(write(tmp_path, "fast.json", body)), Fingerprint)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "invalid JSON"),
        ("[]", "must be a JSON object"),
        ('{"scus": {"scu_ip": 1}}', "valid list"),
        ('{"modality_regex": ["CT"]}', "valid string"),
        ('{"scus": [[[]]]}', "valid dictionary"),
    ],
    ids=["empty", "array", "scus-not-a-list", "regex-not-a-string", "nested-wrong"],
)
def test_a_malformed_file_is_refused_with_its_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    errors = errors_of(write(tmp_path, "bad.json", text))
    assert any(expected in error.message for error in errors), errors


def test_a_huge_file_is_refused_without_being_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_bytes(b" " * (MAX_BYTES + 1))
    [error] = errors_of(path)
    assert "larger than" in error.message


def test_a_hostile_file_leaves_the_others_working(tmp_path: Path) -> None:
    write(tmp_path, "good.json", json.dumps(ORIGINAL))
    write(tmp_path, "slow.json", json.dumps({**ORIGINAL, "exclude_regex": "(x+x+)+y"}))
    loaded = load_folder(tmp_path)
    assert list(loaded.fingerprints) == ["good.json"] and len(loaded.errors) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from([*ORIGINAL, "x", "scu_ip"]), children, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=200)))
def test_the_loader_never_crashes_on_any_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        result = load_file(write(Path(folder), "fuzz.json", text))
    assert isinstance(result, Fingerprint) or (
        result and all(isinstance(error, FingerprintError) for error in result)
    )


CATASTROPHIC = [
    r"(a+)+$",
    r"(a*)*$",
    r"(a|a)*$",
    r"(a|aa)+$",
    r"((a+))+$",
    r"(?:(?:a+))+$",
    r"(([a-z])+.)+[A-Z]([a-z])+$",
    r"(\w+\s?)*$",
    r"(.*a){20}",
    r"(x+x+)+y",
    r"((ab)*)+$",
    r"(.*)*x",
    r"(a?){30}a{30}",
]
HARMLESS = [r"lung", r"^CT$", r"T1|T2", r".*lung", r"(thorax )+lung", r"[0-9]+ mm", r"^1\.2\.840"]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_every_classic_catastrophic_shape_is_taken_for_a_trial(pattern: str) -> None:
    assert risky(pattern)


@pytest.mark.parametrize("pattern", HARMLESS)
def test_plain_patterns_load_without_a_trial(pattern: str) -> None:
    assert not risky(pattern)


@pytest.mark.parametrize("pattern", [r"((a+))+$", r"(a?){30}a{30}", r"((ab)*)+$"])
def test_nested_and_counted_catastrophic_shapes_are_refused(pattern: str) -> None:
    assert too_slow({"series_description_regex": pattern}) == "series_description_regex"
