"""Loading fingerprint files, with errors that tell a physicist what to fix.

A broken file is reported (file, line, column, field, and for a misspelt key the nearest
known one) and skipped; the other files keep working.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from isdr.domain.deid import Deidentify
from isdr.domain.destination import AE_TITLE_MAX, SCU_TAGS, Destination
from isdr.domain.fingerprint import (
    DESTINATION_KEYS,
    KNOWN_KEYS,
    TLS_KEYS,
    TRIGGER_KEYS,
    Fingerprint,
)
from isdr.fingerprints.regex_guard import PROBE_LENGTH, TIME_LIMIT, too_slow

SUFFIX = ".json"
MAX_BYTES = 1 << 20  # a fingerprint is a few hundred bytes
REGEX_KEYS = tuple(key for key in KNOWN_KEYS if key.endswith("_regex"))
DEID_KEYS = tuple(Deidentify.model_fields)


@dataclass(frozen=True)
class FingerprintError:
    """Why one fingerprint file cannot be used."""

    file: str
    message: str
    line: int | None = None
    column: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        what = f"field {self.field!r}: " if self.field else ""
        return f"{where}: {what}{self.message}"


@dataclass(frozen=True)
class Loaded:
    """The usable fingerprints of a folder, by file name, and the errors of the others;
    `warnings`: what in a usable one will not work (it loads all the same)."""

    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    errors: list[FingerprintError] = field(default_factory=list)
    warnings: list[FingerprintError] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        names = ", ".join(sorted(self.fingerprints)) or "none"
        text = f"{len(self.fingerprints)} fingerprint(s) loaded ({names})"
        if self.errors:
            text += f"; {len(self.errors)} error(s): " + "; ".join(map(str, self.errors))
        return text


def fingerprint_files(folder: Path) -> list[Path]:
    """The files that count as fingerprints (`*.json`; `*.json.example` does not)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIX))


def load_folder(folder: Path) -> Loaded:
    """Load every fingerprint file of a folder."""
    loaded = Loaded()
    for path in fingerprint_files(folder):
        result = load_file(path)
        if isinstance(result, Fingerprint):
            loaded.fingerprints[path.name] = result
            loaded.warnings.extend(warnings_of(path.name, result))
        else:
            loaded.errors.extend(result)
    return loaded


def warnings_of(file: str, fingerprint: Fingerprint) -> list[FingerprintError]:
    """What loads but will not work: a destination whose AE title is too long (the
    original relay took it; that destination alone fails at delivery)."""
    return [
        FingerprintError(
            file,
            f"AE title {destination.scu_ae_title!r} is longer than {AE_TITLE_MAX} characters: "
            "this destination will fail at delivery (the others are served); shorten it",
            field=f"scus.{index}.scu_ae_title",
        )
        for index, destination in enumerate(fingerprint.scus)
        if isinstance(destination, Destination) and destination.ae_title_too_long
    ]


def load_file(path: Path) -> Fingerprint | list[FingerprintError]:
    """One fingerprint, or every reason it cannot be used."""
    try:
        if path.stat().st_size > MAX_BYTES:
            return [
                FingerprintError(path.name, f"larger than {MAX_BYTES} bytes: not a fingerprint")
            ]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [FingerprintError(path.name, f"cannot read the file: {exc}")]
    return load_text(path.name, text)


def load_text(name: str, text: str) -> Fingerprint | list[FingerprintError]:
    """One fingerprint from a file's text (named `name` in errors), or every reason it
    cannot be used: what the loader says of a file, and what the API says of a draft."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        return [FingerprintError(name, f"larger than {MAX_BYTES} bytes: not a fingerprint")]
    try:
        data = json.loads(text, object_pairs_hook=without_repeats)
    except json.JSONDecodeError as exc:
        return [FingerprintError(name, f"invalid JSON: {exc.msg}", exc.lineno, exc.colno)]
    except RepeatedKey as exc:
        message = "the key appears twice in one object: keep one (which one counts is unclear)"
        return [FingerprintError(name, message, field=exc.key)]
    if not isinstance(data, dict):
        return [FingerprintError(name, "must be a JSON object { ... }", 1, 1)]
    try:
        fingerprint = Fingerprint.model_validate(data)
    except ValidationError as exc:
        errors = [_describe(name, text, error) for error in _one_reading(exc.errors())]
        return sorted(errors, key=lambda error: (error.line or 0, error.column or 0))
    slow = too_slow(_patterns(fingerprint))
    if slow is not None:
        location = slow.split(".")
        line, column = key_position(text, location[-1], location)
        message = (
            f"this regular expression takes more than {TIME_LIMIT} s to search a "
            f"{PROBE_LENGTH}-character string (catastrophic backtracking): simplify it"
        )
        return [FingerprintError(name, message, line, column, slow)]
    return fingerprint


def _patterns(fingerprint: Fingerprint) -> dict[str, str]:
    """Every regular expression of a fingerprint, by where it is (`triggers.1.modality_regex`)."""
    patterns = {key: getattr(fingerprint, key) for key in REGEX_KEYS}
    for index, trigger in enumerate(fingerprint.triggers):
        patterns |= {f"triggers.{index}.{key}": getattr(trigger, key) for key in REGEX_KEYS}
    return patterns


class RepeatedKey(ValueError):
    """A JSON object names a key twice (json would keep the last one silently)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; RepeatedKey when it names a key twice."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise RepeatedKey(key)
        data[key] = value
    return data


def _one_reading(errors: list[Any]) -> list[Any]:
    """`deidentify` is true/false or an object: pydantic says why it is neither; keep only
    what concerns the reading the file meant (an object's errors when it is an object)."""
    meant = "Deidentify" if any(e["loc"][:2] == ("deidentify", "Deidentify") and
                                e["type"] != "model_type" for e in errors) else "bool"  # fmt: skip
    return [
        e for e in errors
        if not (len(e["loc"]) > 1 and e["loc"][0] == "deidentify" and e["loc"][1] != meant)
    ]  # fmt: skip


def _describe(file: str, text: str, error: Any) -> FingerprintError:
    location = [str(part) for part in error["loc"]]
    if len(location) > 2 and location[0] == "scus" and location[2] in SCU_TAGS:
        del location[2]  # the kind of entry pydantic tried ("node" or "sender")
    if len(location) > 1 and location[0] == "deidentify" and location[1] in ("bool", "Deidentify"):
        del location[1]  # which reading pydantic tried
    key = next((part for part in reversed(location) if not part.isdigit()), "")
    dotted = ".".join(location) or None
    line, column = key_position(text, key, location)
    if error["type"] == "extra_forbidden":
        known = _keys_at(location)
        return FingerprintError(file, unknown_key(key, known), line, column, dotted)
    if error["type"] == "missing":
        return FingerprintError(file, "required but missing", None, None, dotted)
    return FingerprintError(file, _message(error), line, column, dotted)


def _keys_at(location: list[str]) -> tuple[str, ...]:
    """The keys allowed where an unknown one was found: top level, scus[n], its tls, or
    triggers[n]."""
    if location[:1] == ["deidentify"]:
        return DEID_KEYS
    if len(location) > 3 and location[2] == "tls":
        return TLS_KEYS
    if len(location) > 1:
        return TRIGGER_KEYS if location[0] == "triggers" else DESTINATION_KEYS
    return KNOWN_KEYS


def _message(error: Any) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def unknown_key(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown key{hint}"


def key_position(text: str, key: str, location: list[str]) -> tuple[int | None, int | None]:
    """Line and column of the key's n-th occurrence (n from a list index in the location)."""
    if not key:
        return None, None
    occurrences = [m.start() for m in re.finditer(rf'"{re.escape(key)}"\s*:', text)]
    if not occurrences:
        return None, None
    index = next((int(part) for part in location if part.isdigit()), 0)
    offset = occurrences[min(index, len(occurrences) - 1)]
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column
