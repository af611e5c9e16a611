"""Secrets: tokens from the environment or a file, masked passwords in `isdr config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from isdr.config import Settings, describe_settings
from isdr.db.models import FingerprintJSON, InvalidSnapshot
from isdr.domain.fingerprint import Fingerprint, TokenUnavailable

BASE = {"inference_server_url": "https://s", "model_human_readable_id": "m"}


def fingerprint(**fields: Any) -> Fingerprint:
    return Fingerprint.model_validate({**BASE, "inference_server_api": 2, **fields})


def test_a_token_can_come_from_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISDR_TEST_TOKEN", "from-the-environment\n")
    made = fingerprint(inference_server_token_env="ISDR_TEST_TOKEN")
    assert made.token() == "from-the-environment"
    assert "from-the-environment" not in str(made.snapshot())  # the job copy names it only


def test_a_token_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-file\n")
    made = fingerprint(inference_server_token_file=str(tmp_path / "token"))
    assert made.token() == "from-a-file" and "from-a-file" not in str(made.snapshot())


def test_a_missing_variable_or_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(TokenUnavailable, match="ISDR_NO_SUCH_VARIABLE"):
        fingerprint(inference_server_token_env="ISDR_NO_SUCH_VARIABLE").token()
    with pytest.raises(TokenUnavailable, match="inference_server_token_file"):
        fingerprint(inference_server_token_file=str(tmp_path / "absent")).token()


def test_two_token_sources_are_refused() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        fingerprint(inference_server_token="x", inference_server_token_env="Y")


def test_a_literal_token_never_shows_in_the_fingerprints_repr() -> None:
    assert "s3cret" not in repr(fingerprint(inference_server_token="s3cret"))


def test_isdr_config_masks_the_database_password() -> None:
    rows = dict(describe_settings(Settings(DATABASE_URL="postgresql://isdr:s3cret@db/isdr")))
    assert "s3cret" not in str(rows) and rows["DATABASE_URL"] == "postgresql://isdr:***@db/isdr"


@pytest.mark.parametrize("token", ["abc\r\nX-Admin: yes", "abc\ndef", "abc\x00def", "abc\x7f"])
def test_an_inline_token_with_a_control_character_is_refused_without_being_shown(
    token: str,
) -> None:
    with pytest.raises(ValidationError) as refused:
        fingerprint(inference_server_token=token)
    assert "control character" in str(refused.value) and token not in str(refused.value)
    assert "abc" not in str(refused.value)


def test_a_token_variable_with_a_line_break_is_unavailable_and_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ISDR_TEST_TOKEN", "first-half\r\nsecond-half")
    with pytest.raises(TokenUnavailable, match=r"ISDR_TEST_TOKEN.*control character") as refused:
        fingerprint(inference_server_token_env="ISDR_TEST_TOKEN").token()
    assert "half" not in str(refused.value)


def test_a_token_file_with_a_line_break_inside_is_unavailable_and_not_shown(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text("first-half\nsecond-half\n")
    with pytest.raises(TokenUnavailable, match=r"token_file.*control character") as refused:
        fingerprint(inference_server_token_file=str(tmp_path / "token")).token()
    assert "half" not in str(refused.value)


def test_a_jobs_stored_copy_with_a_line_break_token_is_invalid_without_showing_it() -> None:
    stored = {**BASE, "inference_server_token": "first-half\r\nsecond-half"}
    with pytest.raises(InvalidSnapshot) as refused:
        FingerprintJSON().process_result_value(stored, dialect=None)  # type: ignore[arg-type]
    assert "half" not in str(refused.value)
