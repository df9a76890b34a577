"""Sign-in and sign-out (``/login``, ``/logout``) and the upload page (``/upload``).

Signing in puts the token in the ``histimport_token`` cookie (HttpOnly, SameSite=Strict,
Secure over https). The sign-in form is protected against cross-site posts by a nonce
cookie of its own that the form's CSRF field is bound to; every other form carries the
signed-in caller's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from histimport_pipeline.web.app import Reader, State, WebState
from histimport_pipeline.web.auth import (
    COOKIE,
    CSRF_FIELD,
    AccessRefusedError,
    csrf_token,
    find_token,
)
from histimport_pipeline.web.config import Role, UploadMode
from histimport_pipeline.web.pages import optional_caller, render, safe_next

router = APIRouter()
#: The cookie that binds the sign-in form's CSRF field to the browser that loaded it.
LOGIN_NONCE = "histimport_login"


def _login_csrf(state: WebState, nonce: str) -> str:
    return hmac.new(state.config.secret, f"login:{nonce}".encode(), hashlib.sha256).hexdigest()


def _cookie_options(request: Request) -> dict[str, object]:
    return {
        "httponly": True,
        "samesite": "strict",
        "path": "/",
        "secure": request.url.scheme == "https",
    }


def _login_form(request: Request, state: WebState, status: int, message: str) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status,
        login_csrf=_login_csrf(state, nonce),
        next=safe_next(request.query_params.get("next")),
        message=message,
    )
    response.set_cookie(LOGIN_NONCE, nonce, max_age=3600, **_cookie_options(request))  # type: ignore[arg-type]
    return response


@router.get("/login")
def login_page(request: Request, state: State) -> Response:
    """The sign-in form: paste a token (``histimport token NAME`` makes one)."""
    return _login_form(request, state, 200, "")


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    """Check the token and keep it in the cookie; back to where the caller came from."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    nonce = request.cookies.get(LOGIN_NONCE, "")
    sent = fields.get(CSRF_FIELD, "")
    if not nonce or not hmac.compare_digest(sent, _login_csrf(state, nonce)):
        raise AccessRefusedError(
            403, "the sign-in form's CSRF token is missing or wrong; reload the page and try again"
        )
    if not state.config.tokens:
        return _login_form(
            request,
            state,
            409,
            "this service has no tokens configured: it answers reads from this machine "
            "without signing in, and takes no writes",
        )
    token = fields.get("token", "").strip()
    entry = find_token(state.config, token) if token else None
    if entry is None:
        return _login_form(request, state, 401, "that token is not one this service knows")
    response = RedirectResponse(safe_next(fields.get("next")), status_code=303)
    response.set_cookie(COOKIE, token, **_cookie_options(request))  # type: ignore[arg-type]
    response.delete_cookie(LOGIN_NONCE, path="/")
    return response


@router.get("/logout")
def logout_page(request: Request) -> Response:
    """A page with the sign-out button (signing out is a form post, like every change)."""
    return render(request, "logout.html", caller=optional_caller(request))


@router.post("/logout")
async def logout(request: Request, state: State, caller: Reader) -> Response:
    """Forget the cookie. Needs the form's CSRF token, so no other site can sign one out."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if caller.by_cookie and not (
        isinstance(sent, str) and hmac.compare_digest(sent, csrf_token(state.config, caller))
    ):
        raise AccessRefusedError(
            403, "the form's CSRF token is missing or wrong; reload the page and try again"
        )
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/upload")
def upload_page(request: Request, state: State, caller: Reader) -> Response:
    """Pick a dataset and a file; ``app.js`` sends it to ``/api/uploads`` and follows it
    until its import has finished. Operators only."""
    if caller.role is not Role.OPERATOR:
        raise AccessRefusedError(
            403,
            f"uploading needs an operator token; {caller.label} is a {caller.role.value}"
            + ("" if state.config.tokens else " (this service has no tokens configured)"),
            caller.name,
        )
    return render(
        request,
        "upload.html",
        caller=caller,
        datasets=sorted(state.specs()),
        direct=state.config.upload_mode is UploadMode.DIRECT,
        max_bytes=state.config.max_upload_bytes,
    )
