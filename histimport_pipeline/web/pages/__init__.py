"""The HTML pages: imports, one import, datasets, lineage, upload, sign-in.

Server-rendered with Jinja2 (autoescaped); a little plain JavaScript (``static/app.js``)
polls running imports and sends uploads. Nothing is loaded from the internet, and no page
has inline script or style (the policy is ``default-src 'self'``).

* ``imports``: the imports listing and one import (reviews, rollback with confirmation).
* ``datasets``: the datasets with their activity charts, and lineage.
* ``session``: sign-in and sign-out, and the upload page.
* ``charts``: the SVG charts, drawn on the server.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from histimport_pipeline.web.auth import AccessRefusedError, Caller, caller_of, csrf_token
from histimport_pipeline.web.config import Role

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent.parent / "templates")


def when(value: Any) -> str:
    """A moment as the pages show it: ``2024-01-31 12:00:05 UTC`` (empty for none)."""
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def seconds(value: Any) -> str:
    """A duration: ``0.42 s``, ``12.3 s``, ``4 min 05 s`` (empty for none)."""
    if value is None:
        return ""
    total = float(value)
    if total < 10:
        return f"{total:.2f} s"
    if total < 60:
        return f"{total:.1f} s"
    minutes, rest = divmod(round(total), 60)
    return f"{minutes} min {rest:02d} s"


def number(value: Any) -> str:
    """A count with thousands separators (empty for none)."""
    if value is None:
        return ""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


templates.env.filters.update(when=when, seconds=seconds, number=number)


def optional_caller(request: Request) -> Caller | None:
    """The caller, or ``None`` when the request may not read (for the header of any page)."""
    try:
        return caller_of(request, request.app.state.web.config)
    except AccessRefusedError:
        return None


def render(
    request: Request,
    name: str,
    status_code: int = 200,
    caller: Caller | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page from its template, with what every page shows: who is signed in and their
    role, whether tokens are configured, and the caller's CSRF token for the forms."""
    config = request.app.state.web.config
    caller = caller or optional_caller(request)
    shared = {
        "caller": caller,
        "is_operator": caller is not None and caller.role is Role.OPERATOR,
        "tokens_configured": bool(config.tokens),
        "csrf": csrf_token(config, caller) if caller is not None else "",
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, shared | context, status_code=status_code)


def error_page(request: Request, status: int, message: str) -> Response:
    """A page that says what went wrong and nothing else (never a stack trace). A page
    opened without a token (401) leads to the sign-in page instead, which comes back."""
    if status == 401 and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return render(request, "error.html", status, status=status, message=message)


def page_link(path: str, params: dict[str, Any], **changes: Any) -> str:
    """``path`` with the non-empty ``params`` as its query, ``changes`` applied over them."""
    merged = {**params, **changes}
    query = urlencode({k: v for k, v in merged.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def safe_next(target: str | None, default: str = "/") -> str:
    """Where to go back to: a path on this site only (never ``//host`` or a full URL)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def _register() -> None:
    from histimport_pipeline.web.pages import datasets, imports, session

    for module in (imports, datasets, session):
        router.include_router(module.router)


_register()
