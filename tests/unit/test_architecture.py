"""The import rules of docs/architecture: stages meet in the database and the file tree.

Each part of the package may import only the parts listed for it below. The stages
(receiving, the post daemon, the poller, the deliverer) import none of each other; the
libraries they use (db, fingerprints, inference, scu, dicom, tls) import no stage; the
neutral types in `domain` import nothing of ours but `errors`; `app` is the one place
that knows every part, and `cli` only parses arguments and asks `app`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LIBRARIES = {"errors", "domain", "dicom", "tls", "config", "logs", "locks", "synthetic", "pictures"}
STAGES = {"scp", "daemons.post", "daemons.poll", "daemons.deliver", "daemons.heartbeat"}

ALLOWED: dict[str, set[str]] = {
    "isdr": set(),
    "daemons": set(),
    "errors": set(),
    "domain": {"errors"},
    "dicom": {"domain", "errors"},
    "tls": {"domain", "errors"},
    "config": {"domain", "errors", "tls"},
    "logs": {"config"},
    "locks": set(),
    "synthetic": set(),
    "db": {"domain", "errors"},
    "fingerprints": {"domain", "dicom", "errors"},
    "inference": {"domain", "errors"},
    "scu": {"domain", "errors", "tls"},
    "pictures": {"errors"},
    "deid": {"domain", "errors"},
    # the stages
    "scp": {"domain", "dicom", "db", "errors", "logs", "locks", "isdr"},
    "daemons.post": {
        "domain",
        "db",
        "deid",
        "fingerprints",
        "inference",
        "errors",
        "logs",
        "locks",
    },
    "daemons.poll": {"domain", "db", "deid", "dicom", "inference", "errors", "logs"},
    "daemons.deliver": {"domain", "db", "inference", "scu", "errors", "logs"},
    "daemons.heartbeat": {"domain", "db", "inference", "errors", "logs"},
    # the entrances
    "app": STAGES
    | {"config", "db", "demo", "domain", "errors", "fingerprints", "inference"}
    | {"logs", "pictures", "preflight", "scu", "tls", "web"},
    "demo": {"app", "config", "db", "domain", "errors", "logs", "synthetic"},
    "cli": {"isdr", "app", "config", "domain", "errors"},
    "__main__": {"cli"},
    "preflight": {"domain", "errors", "inference", "scu", "tls"},
    # the HTTP side: reads and moves rows, given live facts by app
    "web": {"isdr", "domain", "db", "fingerprints", "pictures", "preflight", "errors", "logs"},
}


def unit_of(module: str) -> str:
    """The part of the package a module belongs to: `isdr.daemons.post` -> daemons.post,
    `isdr.db.jobs` -> db, `isdr` -> isdr."""
    parts = module.split(".")[1:]
    if not parts:
        return "isdr"
    if parts[0] == "daemons" and len(parts) > 1:
        return f"daemons.{parts[1]}"
    return parts[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(SRC).with_suffix("")
    parts = [part for part in relative.parts if part != "__init__"]
    return ".".join(["isdr", *parts])


def imported(tree: ast.AST) -> set[str]:
    """Every isdr module a file imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("isdr")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("isdr"):
            module = node.module or ""
            if module == "isdr":  # from isdr import app, __version__
                found |= {f"isdr.{alias.name}" for alias in node.names}
                found.add("isdr")
            else:
                found.add(module)
    return {name for name in found if not name.endswith(".__version__")}


def violations() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        source = module_name(path)
        unit = unit_of(source)
        for target in sorted(imported(ast.parse(path.read_text()))):
            other = unit_of(target)
            if other != unit and other not in ALLOWED.get(unit, set()):
                found.append(f"{source} imports {target} ({unit} -> {other})")
    return found


def test_every_part_of_the_package_has_rules() -> None:
    units = {unit_of(module_name(path)) for path in SRC.rglob("*.py")}
    assert units <= set(ALLOWED), f"no import rules for {sorted(units - set(ALLOWED))}"


def test_no_part_imports_what_its_rules_forbid() -> None:
    assert violations() == []


def test_stages_import_no_other_stage_and_libraries_import_no_stage() -> None:
    for unit, allowed in ALLOWED.items():
        if unit in STAGES:
            assert not (allowed & STAGES), unit
        if unit in LIBRARIES or unit in {"db", "fingerprints", "inference", "scu"}:
            assert not (allowed & (STAGES | {"app", "cli", "demo"})), unit


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("isdr.config", "isdr.scp.access"),  # the violations the rules were written against
        ("isdr.fingerprints.report", "isdr.scp.headers"),
        ("isdr.daemons.poll", "isdr.scu.files"),
        ("isdr.cli", "isdr.db.engine"),
        ("isdr.daemons.post", "isdr.daemons.poll"),
        ("isdr.scp.ingest", "isdr.daemons.post"),
        ("isdr.domain.fingerprint", "isdr.db.models"),
    ],
)
def test_the_rules_refuse_the_old_shortcuts(source: str, target: str) -> None:
    assert unit_of(target) not in ALLOWED[unit_of(source)]
