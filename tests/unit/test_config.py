from __future__ import annotations

from pathlib import Path

import pytest

from isdr.config import load_settings
from isdr.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("no", False)],
)
def test_booleans_parse_as_booleans(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("DELETE_ON_POST", raw)
    assert load_settings().DELETE_ON_POST is expected


def test_intervals_accept_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POST_INTERVAL", "0.5")
    assert load_settings().POST_INTERVAL == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCP_PORT", "eleven"),
        ("SCP_PORT", "70000"),
        ("DELETE_ON_POST", "maybe"),
        ("POST_AFTER", "-1"),
        ("LOG_LEVEL", "CHATTY"),
        ("SCP_AE_TITLE", "A" * 17),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_database_defaults_to_a_sqlite_file_in_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert load_settings().database_url == f"sqlite:///{tmp_path / 'isdr.sqlite3'}"
