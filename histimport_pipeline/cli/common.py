"""What the ``histimport`` command modules share: consoles, the database session that turns
engine errors into a clean exit, the OS user, JSON output and the little formatters of
statuses, times and counts."""

from __future__ import annotations

import getpass
import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from histimport_pipeline.engine.errors import (
    HistimportError,
    UnexpectedImportError,
    describe_cause,
)
from histimport_pipeline.engine.models import ImportStatus

if TYPE_CHECKING:
    from histimport_pipeline.engine.db import Database
    from histimport_pipeline.engine.dbapi import Reader
    from histimport_pipeline.engine.settings import Settings

#: Width of tables written to a pipe or file, where there is no terminal to measure.
PIPE_WIDTH = 200


class CliConsole(Console):
    """A rich console as wide as the terminal, or ``PIPE_WIDTH`` when output is piped.

    Rich falls back to 80 columns without a terminal, which truncates the history and review
    tables to unreadable stubs in ``histimport history | less`` or a redirected file.
    ``COLUMNS`` still wins when set.
    """

    @property
    def size(self) -> ConsoleDimensions:
        measured = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(PIPE_WIDTH, measured.height)
        return measured

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


out = CliConsole()
err = CliConsole(stderr=True)

#: Exit code of an engine error or an unexpected one.
EXIT_ERROR = 2


class CliState:
    """Options of the whole command line (set by the ``histimport`` callback)."""

    #: Print the traceback of an unexpected error.
    debug: bool = False


def fail_unexpected(exc: BaseException) -> NoReturn:
    """Report an error the engine does not expect in one line (the traceback only with
    ``--debug``: a user needs the cause, a developer the stack) and exit with code 2.

    An import it stopped was recorded as failed with the same cause.
    """
    if isinstance(exc, UnexpectedImportError):
        what = exc.message
        original: BaseException = exc.__cause__ or exc
    else:
        what = f"unexpected error: {describe_cause(exc)}"
        original = exc
    if CliState.debug:
        sys.stderr.write("".join(traceback.format_exception(original)))
        hint = ""
    else:
        hint = ". Run again with --debug for the traceback."
    err.print(f"histimport: {escape(what)}{hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR) from None


@contextmanager
def _reported() -> Iterator[None]:
    """Engine errors as one line on stderr and exit code 2 (unexpected ones as
    :func:`fail_unexpected` says them)."""
    try:
        yield
    except UnexpectedImportError as exc:
        fail_unexpected(exc)
    except HistimportError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None
    except Exception as exc:
        fail_unexpected(exc)


def _settings() -> Settings:
    """The settings from the environment; an unusable one is an error and exit code 2."""
    from histimport_pipeline.engine.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except (SettingsError, HistimportError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@contextmanager
def session() -> Iterator[tuple[Settings, Database]]:
    """Settings and database from the environment, turning engine errors into exit code 2."""
    from histimport_pipeline.engine.db import Database, unavailable_as_transient
    from histimport_pipeline.engine.settings import SettingsError

    settings = _settings()
    try:
        db = Database.from_settings(settings)
    except (SettingsError, HistimportError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        with _reported(), unavailable_as_transient(db.engine.url):
            yield settings, db
    finally:
        db.dispose()


@contextmanager
def tracked() -> Iterator[tuple[Settings, Database]]:
    """Like :func:`session`, for commands that read or write the tracking tables.

    SQLite is migrated on first use; a PostgreSQL database behind the code is an error that
    says to run ``histimport db upgrade``.
    """
    from histimport_pipeline.engine.migrations import ensure_schema

    with session() as (settings, db):
        ensure_schema(db)
        yield settings, db


@contextmanager
def reading() -> Iterator[tuple[Settings, Reader | Database]]:
    """Like :func:`tracked`, for the commands that only read the tracking tables
    (``history``, ``show``, ``stats``): they read through ``engine.dbapi.Reader``, which
    needs no SQLAlchemy, where the database URL allows it and the schema is up to date.
    Anything else (a SQLite file still to create or migrate, a schema behind, a URL the
    reader does not handle) goes the way of :func:`tracked`, which says or does the same as
    for every other command.
    """
    from histimport_pipeline.engine import migrations
    from histimport_pipeline.engine.dbapi import Reader

    settings = _settings()
    reader = Reader.from_settings(settings)
    with _reported():
        up_to_date = reader is not None and migrations.current(reader) == migrations.head()
    if reader is None or not up_to_date:
        with tracked() as (settings, db):
            yield settings, db
        return
    try:
        with _reported():
            yield settings, reader
    finally:
        reader.close()


def os_user() -> str | None:
    """The OS user, or ``None`` where there is no user name (some containers)."""
    try:
        return getpass.getuser()
    except Exception:
        return None


#: ``--user`` of the commands that act on imports (import, rollback, review).
UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        metavar="USER",
        help="Who to record as acting (default: HISTIMPORT_USER, else the OS user).",
    ),
]


def user(settings: Settings | None = None, given: str | None = None) -> str | None:
    """Who is recorded as acting (the import's user, who rolled back or decided a review):
    ``--user``, else ``HISTIMPORT_USER``, else the OS user."""
    chosen = (given or "").strip() or (settings.user if settings else None)
    return chosen or os_user()


def user_email(settings: Settings, given_user: str | None, given: str | None) -> str | None:
    """The acting user's e-mail: ``--email``, else ``HISTIMPORT_USER_EMAIL`` unless
    ``--user`` named someone else than ``HISTIMPORT_USER`` (whose address it is)."""
    if (given or "").strip():
        return (given or "").strip()
    other = (given_user or "").strip() not in ("", settings.user)
    return None if other else settings.user_email


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (dates, decimals and the like made JSON-able)."""
    from histimport_pipeline.engine.tracking import history

    sys.stdout.write(json.dumps(history.jsonable(value), indent=2, ensure_ascii=False) + "\n")


_STATUS_STYLE = {
    ImportStatus.SUCCESS: "green",
    ImportStatus.PARTIAL: "yellow",
    ImportStatus.DUPLICATE: "cyan",
    ImportStatus.FAILED: "red",
    ImportStatus.REJECTED: "red",
    ImportStatus.ROLLED_BACK: "magenta",
}


def when(value: Any) -> str:
    """A timestamp in UTC to the second; ``None`` as an empty cell."""
    if isinstance(value, datetime):
        stamp = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def num(value: Any) -> str:
    return "" if value is None else f"{int(value):,}"


def secs(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f}"


def status_markup(value: str) -> str:
    """An import status in its colour (rich markup); an unknown one as plain text."""
    try:
        style = _STATUS_STYLE.get(ImportStatus(value), "")
    except ValueError:
        style = ""
    return f"[{style}]{escape(value)}[/{style}]" if style else escape(value)


def line(label: str, text: str) -> None:
    """One ``label  text`` line of a summary, labels aligned."""
    out.print(f"[bold]{label:<11}[/bold]{text}", highlight=False)
