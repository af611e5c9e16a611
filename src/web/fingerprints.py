"""/api/v1/fingerprints: the files in FINGERPRINT_DIR, checked, tried and written.

The files stay the one source of truth: a create or replace validates the draft as the
loader would, then writes the file atomically (a temporary name, then a rename), and the
hot reload does the rest; a delete removes the file. A dry run says what `isdr
fingerprints test` would say of a received series' study, from the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel

from isdr.db.routing import study_of_series
from isdr.domain.fingerprint import Fingerprint
from isdr.errors import IsdrError
from isdr.fingerprints.loader import FingerprintError, fingerprint_files, load_file, load_text
from isdr.fingerprints.report import explain
from isdr.web.context import WebContext

Draft = Annotated[dict[str, Any], Body(description="the fingerprint, as its file holds it")]
OptionalDraft = Annotated[dict[str, Any] | None, Body()]
T = TypeVar("T")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\.json$")  # a file name, never a path


class Problem(BaseModel):
    """One reason a fingerprint cannot be used."""

    message: str
    field: str | None
    line: int | None
    column: int | None


class FingerprintOut(BaseModel):
    """One file of FINGERPRINT_DIR, and whether it can be used."""

    name: str
    valid: bool
    problems: list[Problem]
    model: str | None = None
    server: str | None = None
    api: int | None = None
    triggers: list[str] = []
    destinations: int = 0


class Verdict(BaseModel):
    """A draft's check."""

    valid: bool
    problems: list[Problem]


class DryRun(BaseModel):
    """What the fingerprints would decide of a received series' study."""

    series_id: int
    lines: list[str]


def _problems(errors: list[FingerprintError]) -> list[Problem]:
    return [Problem(message=e.message, field=e.field, line=e.line, column=e.column) for e in errors]


def _out(name: str, loaded: Fingerprint | list[FingerprintError]) -> FingerprintOut:
    if not isinstance(loaded, Fingerprint):
        return FingerprintOut(name=name, valid=False, problems=_problems(loaded))
    return FingerprintOut(
        name=name, valid=True, problems=[], model=loaded.model_human_readable_id,
        server=loaded.server_label, api=loaded.inference_server_api,
        triggers=[trigger.label for trigger in loaded.triggers], destinations=len(loaded.scus),
    )  # fmt: skip


def _checked_name(name: str) -> str:
    if not NAME.match(name):
        raise HTTPException(422, "a fingerprint's name is a file name ending in .json")
    return name


def _text(draft: dict[str, Any]) -> str:
    return json.dumps(draft, indent=2, ensure_ascii=False) + "\n"


class DraftInvalid(Exception):
    """A draft that cannot be used, with its problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(problem.message for problem in problems))
        self.problems = problems


class NotWritable(IsdrError):
    """FINGERPRINT_DIR refuses the write (mounted read-only, or its permissions)."""


def list_fingerprints(folder: Path) -> list[FingerprintOut]:
    """Every file, with its problems or what it points at."""
    return [_out(path.name, load_file(path)) for path in fingerprint_files(folder)]


def check_text(text: str, name: str = "draft.json") -> list[Problem]:
    """A draft's problems, as the loader would say them of the file (none: it is valid)."""
    loaded = load_text(name, text)
    return [] if isinstance(loaded, Fingerprint) else _problems(loaded)


def write_text(folder: Path, name: str, text: str) -> FingerprintOut:
    """Create or replace a file, atomically (a temporary name, then a rename), once the
    draft is valid: else DraftInvalid, and the file is left as it was."""
    _checked_name(name)
    _valid_text(text, name)
    temp = folder / f".{name}.part"  # not *.json: the loader does not see it
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, folder / name)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise NotWritable(f"{name} cannot be written in FINGERPRINT_DIR: {exc.strerror}") from exc
    return _out(name, load_file(folder / name))


def remove_file(folder: Path, name: str) -> None:
    """Remove a file (the hot reload drops the fingerprint); LookupError if there is none."""
    path = folder / _checked_name(name)
    if not path.is_file():
        raise LookupError(f"no fingerprint {name}")
    try:
        path.unlink()
    except OSError as exc:
        raise NotWritable(f"{name} cannot be removed: {exc.strerror}") from exc


def read_text(folder: Path, name: str) -> str:
    """A file's text, for the editor; LookupError if there is none."""
    path = folder / _checked_name(name)
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise LookupError(f"no fingerprint {name}") from None


def dry_run(context: WebContext, folder: Path, series_id: int, text: str | None) -> list[str]:
    """What the loaded fingerprints (or only the draft) would decide of a received
    series' study, as `isdr fingerprints test` says it; LookupError without the series."""
    rounds, uids = study_of_series(context.reader, series_id)
    if not rounds:
        raise LookupError(f"no series {series_id}")
    fingerprints = _loaded(folder) if text is None else {"draft.json": _valid_text(text)}
    return explain(rounds, uids, fingerprints)


def fingerprints_router(context: WebContext, folder: Path) -> APIRouter:
    """The fingerprint routes, on FINGERPRINT_DIR."""
    router = APIRouter(prefix="/api/v1/fingerprints", tags=["fingerprints"])

    @router.get("", response_model=list[FingerprintOut])
    def listed() -> list[FingerprintOut]:
        """Every file, with its problems or what it points at."""
        return list_fingerprints(folder)

    @router.post("/validate", response_model=Verdict)
    def validate(draft: Draft) -> Verdict:
        """A draft checked as the loader would check a file (lines are the draft's,
        printed with an indent of 2)."""
        problems = check_text(_text(draft))
        return Verdict(valid=not problems, problems=problems)

    @router.post("/dry-run/{series_id}", response_model=DryRun)
    def dry(series_id: int, draft: OptionalDraft = None) -> DryRun:
        """What the loaded fingerprints (or only the draft, if one is sent) would decide
        of the study of a received series, as `isdr fingerprints test` says it."""
        text = None if draft is None else _text(draft)
        return DryRun(series_id=series_id, lines=_answer(dry_run, context, folder, series_id, text))

    @router.put("/{name}", response_model=FingerprintOut)
    def replace(name: str, draft: Draft) -> FingerprintOut:
        """Create or replace a file: refused (422, with the problems) unless valid."""
        return _answer(write_text, folder, name, _text(draft))

    @router.delete("/{name}", status_code=204)
    def remove(name: str) -> None:
        """Remove a file (the hot reload drops the fingerprint)."""
        _answer(remove_file, folder, name)

    return router


def _answer(action: Callable[..., T], *args: Any) -> T:
    """The action's result, or its refusal as an HTTP answer."""
    try:
        return action(*args)
    except LookupError as exc:
        raise HTTPException(404, str(exc).strip("'")) from None
    except DraftInvalid as exc:
        raise HTTPException(422, [problem.model_dump() for problem in exc.problems]) from None
    except NotWritable as exc:
        raise HTTPException(409, str(exc)) from None


def _valid_text(text: str, name: str = "draft.json") -> Fingerprint:
    loaded = load_text(name, text)
    if not isinstance(loaded, Fingerprint):
        raise DraftInvalid(_problems(loaded))
    return loaded


def _loaded(folder: Path) -> dict[str, Fingerprint]:
    found = {path.name: load_file(path) for path in fingerprint_files(folder)}
    return {name: f for name, f in found.items() if isinstance(f, Fingerprint)}
