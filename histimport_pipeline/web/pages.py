"""The HTML pages: imports, one import, datasets, lineage, upload, sign-in. Server-rendered
with Jinja2; a little plain JavaScript (``static/app.js``) polls running imports. Nothing is
loaded from the internet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    """A page from its template (``code``: the HTTP status)."""
    return templates.TemplateResponse(request, name, context, status_code=code)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A page that says what went wrong and nothing else (never a stack trace)."""
    return render(request, "error.html", status, status=status, message=message)
