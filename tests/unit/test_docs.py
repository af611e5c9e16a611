"""The documentation keeps up with the code: a renamed variable or command fails here."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from isdr import cli
from isdr.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

TWO_COMMANDS = [
    '# 1. install and start the relay (Store SCP "DICOM_NODE" on 127.0.0.1:11112, data in ./data)',
    "apt-get install -y python3-venv && python3 -m venv .venv && .venv/bin/pip install "
    "-c constraints.txt '.[demo]' && .venv/bin/isdr serve",
    "# 2. install and run the tests (real peers: dcmtk's storescu/storescp, a headless Chromium)",
    "apt-get install -y python3-venv dcmtk chromium && python3 -m venv .venv && "
    ".venv/bin/pip install -c constraints.txt -e '.[dev]' && .venv/bin/python -m pytest",
]

# ALL_CAPS_WITH_UNDERSCORES in backticks that are not settings of the relay.
NOT_SETTINGS = {
    "TCP_NODELAY",  # dcmtk's storescu reads it from the environment
    "NO_MKDOCS_2_WARNING",  # Material for MkDocs reads it (CI sets it)
    "NO_PATIENT_ID",  # placeholders of the sorted tree's folder names
    "NO_MODALITY",
    "CERTIFICATE_VERIFY_FAILED",  # OpenSSL's reason, quoted from a log line
    "NET_BIND_SERVICE",  # a Linux capability (docker run --cap-add)
    "ISDR_ECHO",  # the health check's calling AE title
    "DICOM_ENDPOINT_AE",  # an AE title of the original relay's example fingerprint
}

SETTING_LIKE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
ISDR_COMMAND = re.compile(r"\bisdr ([a-z]+)(?: ([a-z]+))?")
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def hook() -> ModuleType:
    """The MkDocs hook that generates the configuration reference, imported by its path."""
    path = DOCS / "hooks" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced code block, in order."""
    blocks = []
    for block in FENCED.findall(text):
        first, *lines = block.splitlines()
        blocks.append((first.removeprefix("```").strip(), lines[:-1]))
    return blocks


def two_commands_block() -> list[str]:
    section = README.read_text().split("## The two commands", 1)[1]
    [(info, lines), *_] = fenced_blocks(section)
    assert info == "sh"
    return lines


def inline_code(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", FENCED.sub("", text))


def subcommands() -> dict[str, set[str]]:
    """Each subcommand of `isdr`, with the words it takes next (`jobs show`, `fingerprints
    check`), read from the argparse parser itself."""
    found: dict[str, set[str]] = {}
    for name, parser in _choices(cli._parser()).items():
        words = set(_choices(parser))
        for action in parser._actions:
            if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
                words |= {str(choice) for choice in action.choices}
        found[name] = words
    return found


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_the_readme_gives_the_two_commands_first_and_exactly() -> None:
    assert two_commands_block() == TWO_COMMANDS
    first = next(lines for info, lines in fenced_blocks(README.read_text()) if info == "sh")
    assert first == TWO_COMMANDS, "the two commands are the README's first commands"


def test_each_of_the_two_commands_installs_with_the_constraints() -> None:
    commands = [line for line in two_commands_block() if not line.startswith("#")]
    assert len(commands) == 2
    for command in commands:
        assert "pip install -c constraints.txt " in command, command


def test_the_extras_the_two_commands_install_exist() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = {extra for line in two_commands_block() for extra in re.findall(r"\.\[(\w+)\]", line)}
    assert named == {"demo", "dev"} and named <= set(extras)


def test_the_readme_is_short_and_names_no_issue_numbers() -> None:
    text = README.read_text()
    assert len(text.split()) < 2500
    assert re.findall(r"\bissues? #?\d+", text, re.IGNORECASE) == []


def test_every_setting_the_docs_name_is_a_setting_of_the_relay() -> None:
    named = {
        (page.relative_to(ROOT).as_posix(), word)
        for page in PAGES
        for span in inline_code(page.read_text())
        for word in SETTING_LIKE.findall(span)
    }
    defaults = {str(field.default) for field in Settings.model_fields.values()}
    unknown = sorted(
        (page, word)
        for page, word in named
        if word not in Settings.model_fields and word not in NOT_SETTINGS | defaults
    )
    assert unknown == []
    assert {word for _, word in named} >= {"POST_AFTER", "SCP_AE_TITLE", "DATA_DIR"}


def test_every_isdr_command_the_docs_name_exists() -> None:
    known = subcommands()
    assert {"serve", "demo", "echo", "config", "series", "fingerprints", "jobs"} <= set(known)
    wrong = []
    for page in PAGES:
        for command, word in ISDR_COMMAND.findall(page.read_text()):
            if command not in known or (word and known[command] and word not in known[command]):
                wrong.append(f"{page.relative_to(ROOT)}: isdr {command} {word}".strip())
    assert wrong == []


def test_the_configuration_page_is_generated_with_every_setting() -> None:
    generator = hook()
    page = (DOCS / "configuration.md").read_text()
    assert generator.MARKER in page
    built = generator.on_page_markdown(page)
    assert generator.MARKER not in built
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in built]
    assert missing == []
    grouped = [name for _, names in generator.setting_groups() for name in names]
    assert grouped == list(Settings.model_fields), "every setting once, in class order"


def test_the_generated_rows_give_type_default_and_description() -> None:
    reference = hook().settings_reference()
    assert "| `SCP_PORT` | integer, ≥ 1, ≤ 65535 | `11112` | TCP port of the Store SCP |" in (
        reference
    )
    assert "| `DELETE_ON_POST` | boolean | `true` |" in reference
    assert "| `DATABASE_URL` | text | *(empty)* |" in reference


def test_the_documentation_site_builds_in_strict_mode(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    site = tmp_path / "site"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    configuration = (site / "configuration" / "index.html").read_text()
    assert [name for name in Settings.model_fields if name not in configuration] == []
    assert (site / "migrating" / "index.html").exists()
