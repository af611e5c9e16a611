"""The operator's documentation keeps up with the code."""

from __future__ import annotations

from pathlib import Path

from isdr.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in text]
    assert missing == []


def test_the_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert ".venv/bin/isdr serve" in text
    assert ".venv/bin/python -m pytest" in text
