"""The console's templates (src/web/templates), with the filters they share."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from isdr.web.auth import Principal

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _when(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _size(value: int) -> str:
    if value < 1024:
        return f"{value} B"
    scaled = value / 1024
    for unit in ("KB", "MB"):
        if scaled < 1024:
            return f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled:.1f} GB"


templates.env.filters["when"] = _when
templates.env.filters["size"] = _size


def page(
    request: Request, template: str, principal: Principal | None, status_code: int = 200,
    **values: Any,
) -> HTMLResponse:  # fmt: skip
    """A template rendered for a request, knowing who asks (for the menu and the forms)."""
    return templates.TemplateResponse(
        request, template, {"principal": principal, **values}, status_code=status_code
    )
