"""The ``histimport`` command line: a thin layer over the engine.

Engine errors become a one-line message on stderr and exit code 2; nothing here holds logic
that the Dagster layer would need too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from histimport_pipeline.engine import migrations
from histimport_pipeline.engine.db import Database, unavailable_as_transient
from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.settings import ENVIRONMENT_VARIABLES, Settings, SettingsError

app = typer.Typer(
    name="histimport",
    help="Import historical data files into a database, with a record of every import.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Apply, roll back and inspect the tracking-schema migrations.")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., object])


@contextmanager
def _database() -> Iterator[Database]:
    """Open the database from the environment, turning engine errors into a clean exit."""
    try:
        settings = Settings.from_env()
        db = Database.from_settings(settings)
    except (SettingsError, HistimportError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        with unavailable_as_transient(db.engine.url):
            yield db
    except HistimportError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        db.dispose()


@app.command("settings")
def show_settings() -> None:
    """Show the settings in force (database password masked)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table("variable", "value", "meaning")
    values = {
        "HISTIMPORT_HOME": str(settings.home),
        "HISTIMPORT_DATABASE_URL": settings.masked_database_url,
        "HISTIMPORT_DB_SCHEMA": settings.db_schema,
        "HISTIMPORT_INBOX": str(settings.inbox),
        "HISTIMPORT_DATASETS": str(settings.datasets),
        "HISTIMPORT_ARCHIVE": str(settings.archive),
        "HISTIMPORT_QUARANTINE": str(settings.quarantine),
    }
    for name, (meaning, _default) in ENVIRONMENT_VARIABLES.items():
        table.add_row(name, values[name], meaning)
    out.print(table)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the newest). A no-op when up to date."""
    with _database() as db:
        applied = migrations.upgrade(db, revision)
        where = db.masked_url + (f" (schema {db.schema})" if db.schema else "")
        if applied:
            out.print(f"applied {', '.join(applied)} to {where}")
        else:
            out.print(f"{where} is already at {migrations.current(db)}; nothing to do")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision; 'base' removes every tracking table.")
    ] = "-1",
) -> None:
    """Roll migrations back to REVISION (default: one step)."""
    with _database() as db:
        if migrations.current(db) is None:
            out.print("no migration is applied; nothing to do")
            return
        undone = migrations.downgrade(db, revision)
        out.print(f"rolled back {', '.join(undone)}; now at {migrations.current(db) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Show the revision the database is at, and the newest one available."""
    with _database() as db:
        rev = migrations.current(db)
        newest = migrations.head()
        state = "up to date" if rev == newest else "behind: run `histimport db upgrade`"
        out.print(f"{db.masked_url}: {rev or 'base'} (newest {newest}; {state})")


@db_app.command("sql")
def db_sql(
    schema: Annotated[
        str | None, typer.Option(help="Schema name (default: HISTIMPORT_DB_SCHEMA).")
    ] = None,
) -> None:
    """Print the PostgreSQL DDL of every migration, for a DBA to review and apply."""
    try:
        name = schema or Settings.from_env().db_schema
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sys.stdout.write(migrations.offline_sql(name))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
