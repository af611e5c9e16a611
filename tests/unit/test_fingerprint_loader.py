"""Fingerprint files: the original format loads; mistakes are named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isdr.domain.fingerprint import Fingerprint
from isdr.fingerprints.loader import FingerprintError, load_file, load_folder
from isdr.fingerprints.report import check_lines

ORIGINAL = {
    "modality_regex": "CT",
    "series_description_regex": "",
    "study_description_regex": "",
    "sop_class_uid_regex": "",
    "exclude_regex": "a^",
    "inference_server_url": "https://inference.example.org/api/tasks/",
    "model_human_readable_id": "lungs",
    "scus": [{"scu_ip": "10.0.0.5", "scu_port": 104, "scu_ae_title": "TPS"}],
}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def errors_of(path: Path) -> list[FingerprintError]:
    result = load_file(path)
    assert isinstance(result, list), "expected errors"
    return result


def test_the_original_relays_format_loads_as_it_is(tmp_path: Path) -> None:
    fingerprint = load_file(write(tmp_path, "a.json", json.dumps(ORIGINAL, indent=2)))
    assert isinstance(fingerprint, Fingerprint)
    assert fingerprint.inference_server_api == 1
    assert fingerprint.scus[0].scu_ae_title == "TPS"
    assert fingerprint.delete_remotely is None


def test_a_misspelt_key_names_file_line_field_and_the_nearest_key(tmp_path: Path) -> None:
    text = json.dumps({**ORIGINAL, "modality_regx": "CT"}, indent=2)
    [error] = errors_of(write(tmp_path, "typo.json", text))
    assert (error.file, error.field) == ("typo.json", "modality_regx")
    lines = text.splitlines()
    assert error.line == next(i for i, line in enumerate(lines, 1) if '"modality_regx"' in line)
    assert "did you mean 'modality_regex'" in str(error)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    [error] = errors_of(write(tmp_path, "c.json", '{\n  "modality_regex": "CT",\n  # comment\n}\n'))
    assert (error.line, error.column) == (3, 3)
    assert str(error).startswith("c.json:3:3: invalid JSON")


def test_bad_values_are_each_reported(tmp_path: Path) -> None:
    bad = {
        **ORIGINAL,
        "exclude_regex": "(unclosed",
        "inference_server_url": "ftp://x",
        "scus": [{"scu_ip": "h", "scu_port": 99999, "scu_ae_title": "A"}],
        "inference_server_api": 3,
    }
    errors = errors_of(write(tmp_path, "b.json", json.dumps(bad, indent=2)))
    fields = {error.field for error in errors}
    assert fields == {
        "exclude_regex",
        "inference_server_url",
        "scus.0.scu_port",
        "inference_server_api",
    }
    assert all(error.line is not None for error in errors)


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    [error] = errors_of(
        write(
            tmp_path,
            "m.json",
            json.dumps({"modality_regex": "CT", "inference_server_url": "https://s"}),
        )
    )
    assert error.field == "model_human_readable_id"
    assert "required" in error.message


def test_a_broken_file_is_skipped_and_the_others_load(tmp_path: Path) -> None:
    write(tmp_path, "good.json", json.dumps(ORIGINAL))
    write(tmp_path, "broken.json", "{")
    write(tmp_path, "list.json", "[]")
    write(tmp_path, "ignored.json.example", "{")
    loaded = load_folder(tmp_path)
    assert list(loaded.fingerprints) == ["good.json"]
    assert sorted(e.file for e in loaded.errors) == ["broken.json", "list.json"]
    assert "1 fingerprint(s) loaded (good.json); 2 error(s)" in loaded.summary()


def test_the_token_is_kept_in_the_snapshot_but_never_printed(tmp_path: Path) -> None:
    fingerprint = load_file(
        write(tmp_path, "t.json", json.dumps({**ORIGINAL, "inference_server_token": "s3cret"}))
    )
    assert isinstance(fingerprint, Fingerprint)
    assert "s3cret" not in repr(fingerprint) and "s3cret" not in str(fingerprint)
    assert fingerprint.snapshot()["inference_server_token"] == "s3cret"
    assert Fingerprint.model_validate(fingerprint.snapshot()) == fingerprint


def test_a_destination_may_ask_for_tls_and_its_mistakes_are_named(tmp_path: Path) -> None:
    tls = {"ca_file": "/certs/tps-ca.pem", "check_hostname": False}
    good = {**ORIGINAL, "scus": [{**ORIGINAL["scus"][0], "tls": tls}]}  # type: ignore[dict-item]
    fingerprint = load_file(write(tmp_path, "tls.json", json.dumps(good)))
    assert isinstance(fingerprint, Fingerprint)
    assert fingerprint.scus[0].tls is not None and fingerprint.scus[0].tls.check_hostname is False
    half = {**ORIGINAL, "scus": [{**ORIGINAL["scus"][0], "tls": {"cert_file": "/c.pem"}}]}  # type: ignore[dict-item]
    [error] = errors_of(write(tmp_path, "half.json", json.dumps(half, indent=2)))
    assert "cert_file and key_file go together" in str(error)
    typo = {**ORIGINAL, "scus": [{**ORIGINAL["scus"][0], "tls": {"ca_fiel": "/c.pem"}}]}  # type: ignore[dict-item]
    [error] = errors_of(write(tmp_path, "typo.json", json.dumps(typo, indent=2)))
    assert "ca_fiel" in str(error) and "ca_file" in str(error)


def test_no_hostname_check_without_a_ca_file_is_refused(tmp_path: Path) -> None:
    loose = {**ORIGINAL, "scus": [{**ORIGINAL["scus"][0], "tls": {"check_hostname": False}}]}  # type: ignore[dict-item]
    [error] = errors_of(write(tmp_path, "loose.json", json.dumps(loose, indent=2)))
    assert "check_hostname false needs a ca_file" in str(error)


def test_a_destination_ae_title_over_16_characters_loads_with_a_warning_naming_it(
    tmp_path: Path,
) -> None:
    scus = [ORIGINAL["scus"][0], {"scu_ip": "h", "scu_port": "11111", "scu_ae_title": "A" * 17}]
    write(tmp_path, "long.json", json.dumps({**ORIGINAL, "scus": scus}))
    loaded = load_folder(tmp_path)
    assert list(loaded.fingerprints) == ["long.json"] and loaded.errors == []
    [warning] = loaded.warnings
    assert (warning.file, warning.field) == ("long.json", "scus.1.scu_ae_title")
    assert "longer than 16 characters" in str(warning) and "fail at delivery" in str(warning)


def test_isdr_fingerprints_check_shows_the_warning_and_the_file_as_ok(tmp_path: Path) -> None:
    scus = [{"scu_ip": "h", "scu_port": 104, "scu_ae_title": "A" * 17}]
    write(tmp_path, "long.json", json.dumps({**ORIGINAL, "scus": scus}))
    lines = check_lines(tmp_path, load_folder(tmp_path))
    assert lines[0].startswith("OK     long.json")
    assert lines[1].startswith("WARN   long.json: field 'scus.0.scu_ae_title'")


def test_check_names_what_a_valid_fingerprint_still_gets_wrong_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ISDR_TEST_NO_SUCH_TOKEN", raising=False)
    (tmp_path / "a.json").write_text(json.dumps({
        "inference_server_url": "https://inference.example.org/api/tasks",
        "model_human_readable_id": "m",
        "scus": [{"scu_ip": "pacs", "scu_port": 104, "scu_ae_title": "PACS",
                  "tls": {"ca_file": str(tmp_path / "missing-ca.pem")}}],
    }))  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps({
        "inference_server_url": "https://inference.example.org", "inference_server_api": 2,
        "model_human_readable_id": "m", "inference_server_token_env": "ISDR_TEST_NO_SUCH_TOKEN",
    }))  # fmt: skip
    text = "\n".join(check_lines(tmp_path, load_folder(tmp_path)))
    assert "a.json: inference_server_url https://inference.example.org/api/tasks lacks its" in text
    assert "a.json: scus.0.tls: ca_file" in text and "is not a readable file" in text
    assert "b.json: the variable ISDR_TEST_NO_SUCH_TOKEN" in text
    assert "OK " not in text


def test_a_key_given_twice_is_an_error_naming_the_file_and_the_key(tmp_path: Path) -> None:
    text = json.dumps(ORIGINAL, indent=2).replace(
        '"model_human_readable_id": "lungs",',
        '"model_human_readable_id": "lungs",\n  "modality_regex": "MR",',
    )
    [error] = errors_of(write(tmp_path, "twice.json", text))
    assert (error.file, error.field) == ("twice.json", "modality_regex")
    assert "twice" in str(error)


def test_a_key_given_twice_inside_a_destination_is_an_error_too(tmp_path: Path) -> None:
    text = json.dumps(ORIGINAL).replace('"scu_port": 104,', '"scu_port": 104, "scu_port": 11112,')
    [error] = errors_of(write(tmp_path, "dest.json", text))
    assert error.field == "scu_port" and "dest.json" in str(error)


TWO_TRIGGERS = {
    "inference_server_url": "https://inference.example.org/api/tasks/",
    "model_human_readable_id": "register",
    "triggers": [
        {"name": "CT", "modality_regex": "^CT$", "check_geometry": True},
        {"name": "MR T1", "modality_regex": "^MR$", "series_description_regex": "T1"},
    ],
}


def test_a_fingerprint_with_triggers_loads(tmp_path: Path) -> None:
    fingerprint = load_file(write(tmp_path, "t.json", json.dumps(TWO_TRIGGERS, indent=2)))
    assert isinstance(fingerprint, Fingerprint) and fingerprint.study_level
    assert [trigger.label for trigger in fingerprint.rules()] == ["CT", "MR T1"]


def test_a_misspelt_key_in_a_trigger_names_its_place_and_the_nearest_trigger_key(
    tmp_path: Path,
) -> None:
    bad = json.loads(json.dumps(TWO_TRIGGERS))
    bad["triggers"][1]["min_serie"] = 2
    text = json.dumps(bad, indent=2)
    [error] = errors_of(write(tmp_path, "t.json", text))
    assert error.field == "triggers.1.min_serie" and "did you mean 'min_series'" in str(error)
    assert error.line == next(
        i for i, line in enumerate(text.splitlines(), 1) if "min_serie" in line
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modality_regex": "CT"}, "give modality_regex in each trigger, not at the top level"),
        ({"triggers": [{"modality_regex": "CT"}, {"modality_regex": "MR"}]},
         "with several triggers, give each a name of its own"),
        ({"triggers": [{"name": "CT", "min_series": 3, "max_series": 2}]},
         "max_series is smaller than min_series"),
        ({"max_wait": 0}, "greater than 0"),
    ],
)  # fmt: skip
def test_a_trigger_mistake_is_named(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    errors = errors_of(write(tmp_path, "t.json", json.dumps(TWO_TRIGGERS | change, indent=2)))
    assert any(message in str(error) for error in errors), errors


def test_a_slow_pattern_inside_a_trigger_is_refused_at_its_place(tmp_path: Path) -> None:
    slow = json.loads(json.dumps(TWO_TRIGGERS))
    slow["triggers"][1]["series_description_regex"] = "(a+)+$"
    [error] = errors_of(write(tmp_path, "s.json", json.dumps(slow, indent=2)))
    assert error.field == "triggers.1.series_description_regex"
    assert "catastrophic backtracking" in str(error)
