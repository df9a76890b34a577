"""Who is calling: tokens, roles, and the CSRF tokens of the pages' forms.

A request carries its token as ``Authorization: Bearer TOKEN`` (scripts) or in the
``histimport_token`` cookie that the page's sign-in sets (browsers). The presented token is
hashed and compared with every configured hash in constant time. With no tokens configured,
the service answers reads from loopback clients only, and refuses every write.

A write authenticated by the cookie must also carry the CSRF token of that cookie (the form
field ``csrf`` or the header ``X-CSRF-Token``), so another site cannot make a signed-in
browser post to the service.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from fastapi import Request

from histimport_pipeline.web.config import Role, TokenEntry, WebConfig

COOKIE = "histimport_token"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"


class AccessRefusedError(Exception):
    """A request the caller may not make: 401 (no or unknown token) or 403 (not allowed)."""

    def __init__(self, status: int, reason: str, caller: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.caller = status, reason, caller


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the token's name (``None``: anonymous), its role, and whether the
    token came in the cookie (then writes need the CSRF token)."""

    name: str | None
    role: Role
    by_cookie: bool = False
    #: The SHA-256 of the presented token ("" when anonymous): the CSRF token is bound to it.
    token_digest: str = ""

    @property
    def label(self) -> str:
        """The name shown and recorded for this caller."""
        return self.name or "anonymous"


def find_token(config: WebConfig, presented: str) -> TokenEntry | None:
    """The configured entry whose hash is the presented token's; every entry is compared, in
    constant time, whether or not one matched earlier."""
    digest = hashlib.sha256(presented.encode("utf-8")).digest()
    found = None
    for entry in config.tokens:
        if hmac.compare_digest(entry.digest, digest):
            found = entry
    return found


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine (the test client's ``testclient`` counts)."""
    if host in (None, "testclient", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _presented(request: Request) -> tuple[str | None, bool]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def caller_of(request: Request, config: WebConfig) -> Caller:
    """The caller of ``request``.

    Raises:
        AccessRefusedError: 401 without a token, or with an unknown one, when tokens are
            configured; 403 for a client off this machine when none are.
    """
    token, by_cookie = _presented(request)
    client = request.client.host if request.client else None
    if not config.tokens:
        if not is_loopback(client):
            raise AccessRefusedError(
                403, "this service has no tokens configured and answers this machine only"
            )
        return Caller(None, Role.VIEWER)
    if token is None:
        raise AccessRefusedError(
            401, "a token is needed: send Authorization: Bearer TOKEN, or sign in on the page"
        )
    entry = find_token(config, token)
    if entry is None:
        raise AccessRefusedError(401, "the token is not one this service knows")
    return Caller(entry.name, entry.role, by_cookie, hashlib.sha256(token.encode()).hexdigest())


def csrf_token(config: WebConfig, caller: Caller) -> str:
    """The CSRF token of a caller's forms: an HMAC of the caller's token under the secret."""
    basis = f"csrf:{caller.token_digest or 'anonymous'}".encode()
    return hmac.new(config.secret, basis, hashlib.sha256).hexdigest()[:40]


def require_operator(caller: Caller, config: WebConfig, csrf: str | None) -> Caller:
    """``caller``, if they may write; a cookie-signed write must carry the CSRF token.

    Raises:
        AccessRefusedError: 403 for a viewer, an anonymous caller or a missing or wrong CSRF
            token.
    """
    if not config.tokens:
        raise AccessRefusedError(
            403,
            "writes need an operator token, and this service has none configured "
            "(HISTIMPORT_WEB_TOKENS; make one with `histimport token NAME --role operator`)",
        )
    if caller.role is not Role.OPERATOR:
        raise AccessRefusedError(
            403,
            f"{caller.label} is a {caller.role.value}; this needs an operator token",
            caller.name,
        )
    if caller.by_cookie and not (csrf and hmac.compare_digest(csrf, csrf_token(config, caller))):
        raise AccessRefusedError(
            403,
            "the form's CSRF token is missing or wrong; reload the page and try again",
            caller.name,
        )
    return caller
