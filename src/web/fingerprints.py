"""/api/v1/fingerprints: the files in FINGERPRINT_DIR, checked, tried and written.

The files stay the one source of truth: a create or replace validates the draft as the
loader would, then writes the file atomically (a temporary name, then a rename), and the
hot reload does the rest; a delete removes the file. A dry run says what `isdr
fingerprints test` would say of a received series' study, from the database.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel

from isdr.db.routing import study_of_series
from isdr.domain.fingerprint import Fingerprint
from isdr.fingerprints.loader import FingerprintError, fingerprint_files, load_file, load_text
from isdr.fingerprints.report import explain
from isdr.web.context import WebContext

Draft = Annotated[dict[str, Any], Body(description="the fingerprint, as its file holds it")]
OptionalDraft = Annotated[dict[str, Any] | None, Body()]
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
        server=str(loaded.inference_server_url), api=loaded.inference_server_api,
        triggers=[trigger.label for trigger in loaded.triggers], destinations=len(loaded.scus),
    )  # fmt: skip


def _checked_name(name: str) -> str:
    if not NAME.match(name):
        raise HTTPException(422, "a fingerprint's name is a file name ending in .json")
    return name


def _text(draft: dict[str, Any]) -> str:
    return json.dumps(draft, indent=2, ensure_ascii=False) + "\n"


def fingerprints_router(context: WebContext, folder: Path) -> APIRouter:
    """The fingerprint routes, on FINGERPRINT_DIR."""
    router = APIRouter(prefix="/api/v1/fingerprints", tags=["fingerprints"])

    @router.get("", response_model=list[FingerprintOut])
    def listed() -> list[FingerprintOut]:
        """Every file, with its problems or what it points at."""
        return [_out(path.name, load_file(path)) for path in fingerprint_files(folder)]

    @router.post("/validate", response_model=Verdict)
    def validate(draft: Draft) -> Verdict:
        """A draft checked as the loader would check a file (lines are the draft's,
        printed with an indent of 2)."""
        loaded = load_text("draft.json", _text(draft))
        errors = [] if isinstance(loaded, Fingerprint) else loaded
        return Verdict(valid=not errors, problems=_problems(errors))

    @router.post("/dry-run/{series_id}", response_model=DryRun)
    def dry_run(series_id: int, draft: OptionalDraft = None) -> DryRun:
        """What the loaded fingerprints (or only the draft, if one is sent) would decide
        of the study of a received series, as `isdr fingerprints test` says it."""
        rounds, uids = study_of_series(context.reader, series_id)
        if not rounds:
            raise HTTPException(404, f"no series {series_id}")
        fingerprints = _loaded(folder) if draft is None else {"draft.json": _valid(draft)}
        return DryRun(series_id=series_id, lines=explain(rounds, uids, fingerprints))

    @router.put("/{name}", response_model=FingerprintOut)
    def replace(name: str, draft: Draft) -> FingerprintOut:
        """Create or replace a file: refused (422, with the problems) unless valid."""
        _valid(draft)
        path = folder / _checked_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".{name}.part"  # not *.json: the loader does not see it
        temp.write_text(_text(draft), encoding="utf-8")
        os.replace(temp, path)
        return _out(name, load_file(path))

    @router.delete("/{name}", status_code=204)
    def remove(name: str) -> None:
        """Remove a file (the hot reload drops the fingerprint)."""
        path = folder / _checked_name(name)
        if not path.is_file():
            raise HTTPException(404, f"no fingerprint {name}")
        path.unlink()

    return router


def _valid(draft: dict[str, Any]) -> Fingerprint:
    loaded = load_text("draft.json", _text(draft))
    if not isinstance(loaded, Fingerprint):
        detail = [problem.model_dump() for problem in _problems(loaded)]
        raise HTTPException(422, detail)
    return loaded


def _loaded(folder: Path) -> dict[str, Fingerprint]:
    found = {path.name: load_file(path) for path in fingerprint_files(folder)}
    return {name: f for name, f in found.items() if isinstance(f, Fingerprint)}
