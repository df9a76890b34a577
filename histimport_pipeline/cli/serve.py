"""``histimport serve`` (the web service: HTTP API and history pages) and ``histimport
token`` (a new access token for it)."""

from __future__ import annotations

from typing import Annotated

import typer

from histimport_pipeline.cli.common import err, out, tracked


def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (loopback unless tokens are set).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
) -> None:
    """Run the web service: the HTTP API under /api (docs at /docs) and the history pages.

    Without tokens (HISTIMPORT_WEB_TOKENS or HISTIMPORT_WEB_TOKENS_FILE) it listens on
    loopback only and serves reads; writes always need an operator token."""
    import uvicorn

    from histimport_pipeline.web.app import create_app
    from histimport_pipeline.web.auth import is_loopback
    from histimport_pipeline.web.config import WebConfig

    config = WebConfig.from_env()
    if not config.tokens and not is_loopback(host) and host != "localhost":
        err.print(
            f"histimport serve: no tokens are configured, so the service listens on loopback "
            f"only, not on {host}; configure HISTIMPORT_WEB_TOKENS (make one with "
            "`histimport token NAME --role viewer`) or use --host 127.0.0.1"
        )
        raise typer.Exit(2)
    with tracked() as (settings, db):
        app = create_app(settings, config, db)
        roles = sorted({t.role.value for t in config.tokens})
        access = f"tokens: {', '.join(roles)}" if roles else "no tokens: reads only, loopback"
        out.print(
            f"histimport web service on http://{host}:{port}/ ({access}; "
            f"uploads imported by the {config.upload_mode.value})",
            highlight=False,
        )
        uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)


def new_token(
    name: Annotated[str, typer.Argument(help="Who the token is for; recorded as the user.")],
    role: Annotated[
        str, typer.Option("--role", help="viewer (reads) or operator (also writes).")
    ] = "viewer",
) -> None:
    """Make an access token for the web service. Prints the token (give it to NAME; it is
    not stored) and the entry to add to HISTIMPORT_WEB_TOKENS or its file (a hash)."""
    from histimport_pipeline.web.config import Role, new_token

    if role not in {r.value for r in Role}:
        raise typer.BadParameter("viewer or operator", param_hint="--role")
    if not name or any(ch in name for ch in ": \t,#"):
        raise typer.BadParameter("a name without spaces, commas, colons or #", param_hint="NAME")
    token, entry = new_token(name, Role(role))
    out.print(f"token for {name} ({role}): {token}", highlight=False)
    out.print(f"add to HISTIMPORT_WEB_TOKENS or its file: {entry}", highlight=False)
