"""``histimport settings``, ``db upgrade|downgrade|current|sql``, ``cleanup`` and
``dagster-url``: the commands that look after the database and the settings, not one import."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from histimport_pipeline.cli.common import err, os_user, out, session, tracked, user

if TYPE_CHECKING:
    from histimport_pipeline.engine.db import Database

db_app = typer.Typer(help="Apply, roll back and inspect the tracking-schema migrations.")


@contextmanager
def _database() -> Iterator[Database]:
    """Open the database from the environment, turning engine errors into a clean exit."""
    with session() as (_settings, db):
        yield db


def show_settings() -> None:
    """Show the settings in force (database password masked)."""
    from histimport_pipeline.engine.settings import ENVIRONMENT_VARIABLES, Settings, SettingsError

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
        "HISTIMPORT_LOOKBACK_DAYS": str(settings.lookback_days),
        "HISTIMPORT_PARTITION_RETENTION_DAYS": str(settings.partition_retention_days),
        "HISTIMPORT_MAX_FIELD_BYTES": str(settings.max_field_bytes),
        "HISTIMPORT_STALE_AFTER_SECONDS": str(settings.stale_after_seconds),
        "HISTIMPORT_PROGRESS_EVERY_S": f"{settings.progress_every_s:g}",
        "HISTIMPORT_ERROR_DIR": str(settings.error_dir),
        "HISTIMPORT_RETENTION_DAYS": str(settings.retention_days),
        "HISTIMPORT_ARCHIVE_AFTER_DAYS": str(settings.archive_after_days),
        "HISTIMPORT_WAIT_SECONDS": str(settings.wait_seconds),
        "HISTIMPORT_USER": settings.user or f"{os_user() or '?'} (the OS user)",
        "HISTIMPORT_USER_EMAIL": settings.user_email or "",
    }
    for name, (meaning, _default) in ENVIRONMENT_VARIABLES.items():
        table.add_row(name, values[name], meaning)
    out.print(table)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the newest). A no-op when up to date."""
    from histimport_pipeline.engine import migrations

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
    from histimport_pipeline.engine import migrations

    with _database() as db:
        if migrations.current(db) is None:
            out.print("no migration is applied; nothing to do")
            return
        undone = migrations.downgrade(db, revision)
        out.print(f"rolled back {', '.join(undone)}; now at {migrations.current(db) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Show the revision the database is at, and the newest one available."""
    from histimport_pipeline.engine import migrations

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
    from histimport_pipeline.engine import migrations
    from histimport_pipeline.engine.settings import Settings, SettingsError

    try:
        name = schema or Settings.from_env().db_schema
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sys.stdout.write(migrations.offline_sql(name))


def cleanup(
    older_than: Annotated[
        int | None,
        typer.Option(
            "--older-than",
            min=0,
            metavar="DAYS",
            help="Retention period of failed rows and error files "
            "(default: HISTIMPORT_RETENTION_DAYS, 30).",
        ),
    ] = None,
    archive_after: Annotated[
        int | None,
        typer.Option(
            "--archive-after",
            min=0,
            metavar="DAYS",
            help="Archive imports older than this (default: HISTIMPORT_ARCHIVE_AFTER_DAYS, 365).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Remove failed-row records and error files past the retention period, archive imports
    past the archive period (their detail rows go, the history row stays, no rollback any
    more), mark imports whose worker died failed, and drop leftover staging tables of imports
    that are not running. The daily Dagster retention schedule runs the same."""
    from histimport_pipeline.engine.tracking import cleanup as retention

    with tracked() as (settings, db):
        days = settings.retention_days if older_than is None else older_than
        archive_days = settings.archive_after_days if archive_after is None else archive_after
        counts = retention.cleanup(
            db,
            days,
            error_dir=settings.error_dir,
            actor=user(settings),
            stale_after=timedelta(seconds=settings.stale_after_seconds),
            archive_after_days=archive_days,
            dry_run=dry_run,
        )

    def did(past: str, base: str) -> str:
        return f"would {base}" if dry_run else past

    out.print(
        f"{did('failed', 'fail')} {counts['dead_imports_failed']:,} import(s) left running by "
        "a dead worker",
        highlight=False,
    )
    out.print(
        f"{did('archived', 'archive')} {counts['imports_archived']:,} import(s) older than "
        f"{archive_days} day(s), with {counts['reconciliation_matches_deleted']:,} "
        f"reconciliation match(es) and {counts['row_images_deleted']:,} before-image(s)",
        highlight=False,
    )
    out.print(
        f"{did('removed', 'remove')} {counts['failed_rows_deleted']:,} failed-row record(s) and "
        f"{counts['error_files_deleted']:,} error file(s) older than {days} day(s)",
        highlight=False,
    )
    if dry_run:
        for path in counts["error_files"]:
            out.print(f"  {escape(path)}", highlight=False)
    out.print(
        f"{did('dropped', 'drop')} {counts['staging_tables_dropped']:,} leftover staging table(s)",
        highlight=False,
    )
    out.print(
        "dry run: nothing was changed" if dry_run else "Import history is kept.", highlight=False
    )


def dagster_url() -> None:
    """Print HISTIMPORT_DATABASE_URL as a URL for Dagster's PostgreSQL instance storage."""
    from histimport_pipeline.engine.settings import Settings, SettingsError, dagster_instance_url

    try:
        settings = Settings.from_env()
        sys.stdout.write(dagster_instance_url(settings.database_url) + "\n")
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
