"""MkDocs hook: the configuration reference, generated from `isdr.config.Settings`.

`docs/configuration.md` holds the marker below; at build time it is replaced by one table
per group of settings (the `# --- name ---` comments of the class), in class order, with
each field's name, type, default and `Field(description=...)`. The table cannot drift
from the code. `tests/unit/test_docs.py` imports this file by its path.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from isdr.config import Settings

MARKER = "<!-- settings-table -->"
_GROUP = re.compile(r"^\s*# --- (.+?) ---\s*$")
_FIELD = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*:")
_TYPES = {bool: "boolean", int: "integer", float: "number", str: "text", Path: "path"}
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
_LENGTHS = (("min_length", "≥"), ("max_length", "≤"))


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs calls this for every page; only a page with the marker changes."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, settings_reference())


def settings_reference() -> str:
    """The Markdown of the whole reference: a heading and a table per group."""
    return "\n\n".join(_group_table(title, names) for title, names in setting_groups())


def setting_groups() -> list[tuple[str, list[str]]]:
    """(group title, field names) in class order, grouped by the class's comment headers."""
    groups: dict[str, list[str]] = {}
    title = "Settings"
    for line in inspect.getsource(Settings).splitlines():
        if header := _GROUP.match(line):
            title = header.group(1)
        elif (field := _FIELD.match(line)) and field.group(1) in Settings.model_fields:
            groups.setdefault(title, []).append(field.group(1))
    placed = {name for names in groups.values() for name in names}
    unplaced = [name for name in Settings.model_fields if name not in placed]
    if unplaced:
        groups.setdefault("Other settings", []).extend(unplaced)
    return list(groups.items())


def _group_table(title: str, names: list[str]) -> str:
    lines = [
        f"### {title[:1].upper()}{title[1:]}",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    lines += [_row(name, Settings.model_fields[name]) for name in names]
    return "\n".join(lines)


def _row(name: str, field: FieldInfo) -> str:
    cells = (f"`{name}`", type_text(field), default_text(field.default), field.description or "")
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def type_text(field: FieldInfo) -> str:
    """The field's type as a reader writes it, with its bounds: `integer, ≥ 1, ≤ 65535`."""
    if get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in get_args(field.annotation))
    parts = [_TYPES.get(field.annotation, str(field.annotation))]  # type: ignore[arg-type]
    for constraint in field.metadata:
        parts += [f"{sign} {_number(getattr(constraint, key))}" for key, sign in _BOUNDS
                  if getattr(constraint, key, None) is not None]  # fmt: skip
        parts += [f"length {sign} {getattr(constraint, key)}" for key, sign in _LENGTHS
                  if getattr(constraint, key, None) is not None]  # fmt: skip
    return ", ".join(parts)


def default_text(value: object) -> str:
    """The default as it would be written in the environment."""
    if value == "":
        return "*(empty)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{_number(value)}`"
    return f"`{value}`"


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
