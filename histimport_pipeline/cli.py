"""The ``histimport`` command line: a thin layer over the engine.

Engine errors become a one-line message on stderr and exit code 2; nothing here holds logic
that the Dagster layer would need too. Commands that report on imports take ``--json`` for
scripts; the rest of the output is for people.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from histimport_pipeline.cli_common import (
    CliState,
    err,
    fail_unexpected,
    out,
    print_json,
    session,
    tracked,
    user,
)
from histimport_pipeline.cli_review import review_app
from histimport_pipeline.engine import history, migrations
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.demo import write_demo
from histimport_pipeline.engine.errors import DatasetNotFoundError, HistimportError
from histimport_pipeline.engine.models import ImportSource, ImportStatus, ImportType
from histimport_pipeline.engine.pipeline import (
    ImportOptions,
    ImportResult,
    run_import,
)
from histimport_pipeline.engine.rollback import rollback_import
from histimport_pipeline.engine.settings import (
    ENVIRONMENT_VARIABLES,
    Settings,
    SettingsError,
    dagster_instance_url,
)
from histimport_pipeline.engine.spec import DatasetSpec, load_specs, route_file

app = typer.Typer(
    name="histimport",
    help="Import historical data files into a database, with a record of every import.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Apply, roll back and inspect the tracking-schema migrations.")
app.add_typer(db_app, name="db")
app.add_typer(review_app, name="review")


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback of an unexpected error.")
    ] = False,
) -> None:
    CliState.debug = debug


F = TypeVar("F", bound=Callable[..., object])

#: Exit code of an import that ended failed or rejected (engine errors exit with 2).
EXIT_IMPORT_FAILED = 1
_STATUS_STYLE = {
    ImportStatus.SUCCESS: "green",
    ImportStatus.PARTIAL: "yellow",
    ImportStatus.DUPLICATE: "cyan",
    ImportStatus.FAILED: "red",
    ImportStatus.REJECTED: "red",
    ImportStatus.ROLLED_BACK: "magenta",
}

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def _database() -> Iterator[Database]:
    """Open the database from the environment, turning engine errors into a clean exit."""
    with session() as (_settings, db):
        yield db


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        stamp = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def _num(value: Any) -> str:
    return "" if value is None else f"{int(value):,}"


def _secs(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f}"


def _status(value: str) -> str:
    try:
        style = _STATUS_STYLE.get(ImportStatus(value), "")
    except ValueError:
        style = ""
    return f"[{style}]{escape(value)}[/{style}]" if style else escape(value)


def _line(label: str, text: str) -> None:
    out.print(f"[bold]{label:<11}[/bold]{text}", highlight=False)


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
        "HISTIMPORT_LOOKBACK_DAYS": str(settings.lookback_days),
        "HISTIMPORT_PARTITION_RETENTION_DAYS": str(settings.partition_retention_days),
        "HISTIMPORT_MAX_FIELD_BYTES": str(settings.max_field_bytes),
        "HISTIMPORT_STALE_AFTER_SECONDS": str(settings.stale_after_seconds),
        "HISTIMPORT_WAIT_SECONDS": str(settings.wait_seconds),
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


# Import ---------------------------------------------------------------------------------------


def _spec_for(settings: Settings, path: Path, dataset: str | None) -> DatasetSpec:
    specs = load_specs(settings.datasets)
    if dataset is None:
        return route_file(path, specs, settings.inbox)
    if dataset not in specs:
        raise DatasetNotFoundError(f"dataset {dataset!r}", list(specs))
    return specs[dataset]


@contextmanager
def _progress_bar(path: Path) -> Iterator[Callable[[int], None] | None]:
    """A live row counter on stderr when it is a terminal; nothing otherwise (logs, pipes)."""
    if not sys.stderr.isatty():
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} rows read"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(escape(path.name), total=None)

        def advance(rows_read: int) -> None:
            bar.update(task, completed=rows_read)

        yield advance


def _print_summary(result: ImportResult, detail: Mapping[str, Any] | None) -> None:
    """One screen: status, counts, per-phase seconds, top errors and what to do next."""
    status = result.status
    if result.dry_run:
        head = (
            f"dry run of {escape(result.file_name)} into {escape(result.dataset)}: "
            f"would end {_status(status.value)} [dim](nothing was written)[/dim]"
        )
    else:
        head = (
            f"import {result.import_id}: {_status(status.value)} - "
            f"{escape(result.file_name)} into {escape(result.dataset)}"
        )
    out.print(head, highlight=False)
    if status is ImportStatus.DUPLICATE:
        _line(
            "duplicate",
            f"already imported by import {result.duplicate_of}; nothing loaded "
            "(use --force to import it again)",
        )
    elif result.error_message:
        _line("error", escape(result.error_message))
    if status is not ImportStatus.DUPLICATE:
        verb = "would be " if result.dry_run else ""
        _line(
            "rows",
            f"read {result.rows_read:,} | {verb}created {result.rows_created:,} | "
            f"{verb}updated {result.rows_updated:,} | unchanged {result.rows_unchanged:,} | "
            f"failed {result.rows_failed:,} | duplicates {result.rows_duplicate:,}"
            # Rows a replace_date import removed before loading its day.
            + (f" | {verb}deleted {result.rows_deleted:,}" if result.rows_deleted else ""),
        )
    seconds = dict(result.phase_seconds)
    if detail and detail.get("total_seconds") is not None:
        seconds["total"] = float(detail["total_seconds"])
    if seconds:
        _line("seconds", " | ".join(f"{k} {float(v):.2f}" for k, v in seconds.items()))
    for warning in result.warnings:
        _line("warning", escape(warning))
    summary = (detail or {}).get("error_summary") or result.error_summary or {}
    top = summary.get("top_errors") or []
    if top:
        out.print("[bold]top errors[/bold]")
        for entry in top:
            where = entry.get("column") or "(row)"
            out.print(
                f"  {escape(str(where))} ({escape(str(entry.get('category')))}) "
                f"x{entry.get('count')}: {escape(str(entry.get('example')))}",
                highlight=False,
            )
    for hint in _next_steps(result):
        _line("next", hint)


def _next_steps(result: ImportResult) -> list[str]:
    status, iid = result.status, result.import_id
    if result.dry_run:
        if status in (ImportStatus.FAILED, ImportStatus.REJECTED):
            return ["fix the file (or the spec) and try the dry run again"]
        return ["run the same command without --dry-run to import"]
    if status is ImportStatus.DUPLICATE:
        return [f"histimport show {result.duplicate_of}"]
    hints = []
    if result.rows_failed or result.rows_duplicate:
        hints.append(f"histimport errors {iid} -o errors.csv")
    if status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL):
        hints.append(f"histimport show {iid}   (undo: histimport rollback {iid})")
    elif not hints:
        hints.append(f"histimport show {iid}")
    return hints


@app.command("import")
def import_file(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="The file to import."),
    ],
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="Dataset name (default: routed by the file name)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Import even if this content was imported before.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Do everything but keep nothing; report what would happen."),
    ] = False,
    wait: Annotated[
        int | None,
        typer.Option(
            "--wait",
            min=0,
            metavar="SECONDS",
            help="How long to wait for another running import of the same content "
            "(default: HISTIMPORT_WAIT_SECONDS, 600).",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Do not wait for it: end failed at once (exit 1)."),
    ] = False,
) -> None:
    """Import FILE and print a summary. Exits 1 when the import failed or was rejected, or
    when another import of the same content still runs after the wait."""
    with tracked() as (settings, db):
        spec = _spec_for(settings, file, dataset)
        wait_s = 0 if no_wait else settings.wait_seconds if wait is None else wait
        options = ImportOptions(
            force=force,
            dry_run=dry_run,
            import_type=ImportType.MANUAL,
            source=ImportSource.CLI,
            triggered_by=user(),
            max_field_bytes=settings.max_field_bytes,
            wait_for_holder_s=wait_s,
            stale_after=timedelta(seconds=settings.stale_after_seconds),
        )

        def waiting(holder: int) -> None:
            err.print(
                f"waiting for import {holder} (running) of the same content to end, at most "
                f"{wait_s} s (--no-wait: don't wait)",
                highlight=False,
            )

        with _progress_bar(file) as progress:
            result = run_import(db, spec, file, options, progress, on_wait=waiting)
        detail = None if result.dry_run else history.get_import_detail(db, result.import_id)
        _print_summary(result, detail)
    if result.status in (ImportStatus.FAILED, ImportStatus.REJECTED):
        raise typer.Exit(EXIT_IMPORT_FAILED)


# History and one import ---------------------------------------------------------------------


@app.command("history")
def show_history(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    status: Annotated[ImportStatus | None, typer.Option(help="Only this status.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only imports since a date (2024-01-31) or an age (7d, 12h, 30m)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many imports.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip the newest OFFSET imports.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """List imports, newest first."""
    with tracked() as (_settings, db):
        after = history.parse_since(since) if since else None
        rows = history.list_imports(
            db, dataset, status.value if status else None, after, limit, offset
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        filtered = dataset or status or since or offset
        out.print("no imports match" if filtered else "no imports yet")
        return
    table = Table(
        "id",
        "dataset",
        "status",
        "file",
        "started (UTC)",
        "read",
        "created",
        "updated",
        "unchanged",
        "failed",
        "seconds",
        "by",
    )
    for r in rows:
        table.add_row(
            str(r["import_id"]),
            escape(r["dataset"]),
            _status(r["status"]),
            escape(r["file_name"] or ""),
            _when(r["started_at"]),
            _num(r["rows_in_file"]),
            _num(r["rows_created"]),
            _num(r["rows_updated"]),
            _num(r["rows_unchanged"]),
            _num(r["rows_failed"]),
            _secs(r["total_seconds"]),
            escape(r["triggered_by"] or ""),
        )
    out.print(table)
    if len(rows) == limit:
        out.print(f"[dim]more may exist: --offset {offset + limit}[/dim]")


_SHOW_FIELDS = (
    "dataset",
    "target_table",
    "status",
    "phase",
    "import_type",
    "source",
    "partition_key",
    "business_date",
    "dagster_run_id",
    "file_name",
    "file_path",
    "file_size",
    "file_type",
    "file_sha256",
    "strategy",
    "forced",
    "retry_of",
    "triggered_by",
    "worker",
    "created_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "error_message",
)
_SHOW_COUNTS = (
    "rows_in_file",
    "rows_processed",
    "rows_created",
    "rows_updated",
    "rows_unchanged",
    "rows_failed",
    "rows_duplicate",
    "rows_review",
    "rows_deleted",
)


def _compact(value: Any) -> str:
    if isinstance(value, Mapping | list):
        return escape(json.dumps(history.jsonable(value), ensure_ascii=False))
    if isinstance(value, datetime):
        return _when(value)
    return escape("" if value is None else str(value))


@app.command("show")
def show_import(
    import_id: Annotated[int, typer.Argument(help="The import id (see `histimport history`).")],
    as_json: JsonOption = False,
) -> None:
    """Show everything recorded about one import."""
    with tracked() as (_settings, db):
        detail = history.get_import_detail(db, import_id)
    if as_json:
        print_json(detail)
        return
    out.print(f"[bold]import {import_id}[/bold]: {_status(detail['status'])}")
    fields = Table.grid(padding=(0, 2))
    for name in _SHOW_FIELDS:
        if detail.get(name) is not None:
            value = _status(detail[name]) if name == "status" else _compact(detail[name])
            fields.add_row(name, value)
    counts = " | ".join(
        f"{name.removeprefix('rows_')} {_num(detail[name])}"
        for name in _SHOW_COUNTS
        if detail.get(name) is not None
    )
    if counts:
        fields.add_row("rows", counts)
    if detail.get("phase_seconds"):
        seconds = " | ".join(f"{k} {_secs(v)}" for k, v in detail["phase_seconds"].items())
        fields.add_row("seconds", f"{seconds} | total {_secs(detail.get('total_seconds'))}")
    for name in ("file_metadata", "column_mapping", "warnings", "reconciliation"):
        if detail.get(name):
            fields.add_row(name, _compact(detail[name]))
    failed = detail["failed_rows"]
    fields.add_row(
        "failed rows kept",
        f"{failed['total']:,}" + (f" {_compact(failed['by_category'])}" if failed["total"] else ""),
    )
    out.print(fields)
    summary = detail.get("error_summary") or {}
    if summary.get("top_errors"):
        errors = Table("column", "category", "count", "example", title="top errors")
        for entry in summary["top_errors"]:
            errors.add_row(
                escape(str(entry.get("column") or "")),
                escape(str(entry.get("category"))),
                str(entry.get("count")),
                escape(str(entry.get("example"))),
            )
        out.print(errors)
        if failed["total"]:
            out.print(f"failed rows as CSV: histimport errors {import_id} -o errors.csv")
    trail = Table("when (UTC)", "action", "actor", "details", title="audit trail")
    for entry in detail["audit_trail"]:
        trail.add_row(
            _when(entry["created_at"]),
            escape(entry["action"]),
            escape(entry["actor"] or ""),
            _compact(entry["details"]) if entry["details"] else "",
        )
    out.print(trail)


@app.command("errors")
def export_errors(
    import_id: Annotated[int, typer.Argument(help="The import id.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="CSV file to write (default: $HISTIMPORT_HOME/errors/import_ID_errors.csv, "
            "which `histimport cleanup` removes after the retention period).",
        ),
    ] = None,
) -> None:
    """Write the failed rows of an import as CSV: original columns plus _error_* columns."""
    with tracked() as (settings, db):
        path = output or settings.home / "errors" / f"import_{import_id}_errors.csv"
        written = history.export_failed_rows(db, import_id, path)
    out.print(f"wrote {written:,} failed row(s) of import {import_id} to {escape(str(path))}")


# Statistics and lineage -------------------------------------------------------------------------


@app.command("stats")
def show_stats(
    days: Annotated[int, typer.Option(min=1, help="Look back this many days.")] = 30,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Per dataset: imports by status, rows loaded and failed, seconds spent."""
    with tracked() as (_settings, db):
        rows = history.stats(db, days, dataset)
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(f"no imports in the last {days} days")
        return
    table = Table(
        "dataset",
        "imports",
        "by status",
        "rows loaded",
        "rows failed",
        "mean s",
        "total s",
        title=f"last {days} days",
    )
    for r in rows:
        by_status = ", ".join(f"{s} {n}" for s, n in r["by_status"].items())
        table.add_row(
            escape(r["dataset"]),
            _num(r["imports"]),
            escape(by_status),
            _num(r["rows_loaded"]),
            _num(r["rows_failed"]),
            _secs(r["mean_seconds"]),
            _secs(r["total_seconds"]),
        )
    out.print(table)


def _key_values(spec: DatasetSpec, items: list[str]) -> dict[str, str]:
    """``--key`` options as key column -> text: ``--key 42`` for a single-column key,
    ``--key a=1 --key b=2`` for a composite one (the ``NAME=`` form works for both)."""
    if len(spec.key) == 1 and len(items) == 1:
        name, sep, value = items[0].partition("=")
        if sep and name == spec.key[0]:
            return {name: value}
        return {spec.key[0]: items[0]}
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise HistimportError(
                f"--key {item!r}: table {spec.target_table} is keyed by "
                f"{', '.join(spec.key) or 'nothing'}; give each part as --key NAME=VALUE"
            )
        if name in values:
            raise HistimportError(f"--key {name} is given twice")
        values[name] = value
    return values


def _spec_of_table(settings: Settings, table: str) -> DatasetSpec:
    specs = [s for s in load_specs(settings.datasets).values() if s.target_table == table]
    if not specs:
        raise HistimportError(
            f"no dataset spec in {settings.datasets} writes table {table!r}, so its key "
            "columns are unknown"
        )
    return specs[0]


@app.command("lineage")
def show_lineage(
    table: Annotated[str, typer.Argument(help="A target table.")],
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            "-k",
            help="The row's key: --key 42, or --key a=1 --key b=2 for a composite key.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Which imports wrote the rows of TABLE; with --key, where one row came from."""
    with tracked() as (settings, db):
        if key:
            spec = _spec_of_table(settings, table)
            wanted = _key_values(spec, key)
            found = history.lineage_of_key(db, spec, wanted)
        else:
            contributed = history.lineage(db, table)
    if not key:
        if as_json:
            print_json(contributed)
            return
        if not contributed:
            out.print(f"table {escape(table)} has no rows")
            return
        grid = Table(
            "import",
            "dataset",
            "file",
            "started (UTC)",
            "status",
            "rows in table",
            title=f"lineage of {table}",
        )
        for r in contributed:
            grid.add_row(
                str(r["import_id"]),
                escape(r["dataset"] or ""),
                escape(r["file_name"] or "(not in history)"),
                _when(r["started_at"]),
                _status(r["status"]) if r["status"] else "",
                _num(r["rows"]),
            )
        out.print(grid)
        return
    shown = ", ".join(f"{k}={v}" for k, v in wanted.items())
    if found is None:
        if as_json:
            print_json(None)
        else:
            err.print(f"no row with {escape(shown)} in {escape(table)}")
        raise typer.Exit(1)
    if as_json:
        print_json(found)
        return
    imp = found["import"] or {}
    out.print(f"row {escape(shown)} of {escape(table)}", highlight=False)
    _line("written by", f"import {found['import_id']} ({escape(str(imp.get('status')))})")
    _line("file", escape(str(imp.get("file_name"))) + f", source row {found['source_row']}")
    if imp.get("file_path"):
        _line("path", escape(str(imp["file_path"])))
    _line("loaded at", _when(found["loaded_at"]) + " UTC")
    if imp.get("triggered_by"):
        _line("by", escape(str(imp["triggered_by"])))
    _line("values", _compact(found["row"]))


# Rollback and cleanup -------------------------------------------------------------------------


@app.command("rollback")
def rollback(
    import_id: Annotated[int, typer.Argument(help="The import to undo.")],
    cascade: Annotated[
        bool,
        typer.Option("--cascade", help="Also roll back later imports that changed its rows."),
    ] = False,
) -> None:
    """Undo an import exactly: delete its rows and restore the rows it changed."""
    with tracked() as (_settings, db):
        result = rollback_import(db, import_id, cascade=cascade, actor=user())
        status = None
        if result.nothing_loaded:
            status = history.get_import_detail(db, import_id)["status"]
    if result.already:
        out.print(f"import {import_id} was already rolled back; nothing to do")
        return
    if result.nothing_loaded:
        out.print(f"import {import_id} loaded nothing (status {status}); nothing to undo")
        return
    for undone in result.undone:
        masters = (
            f"; removed {undone.master_rows_deleted:,} master row(s) it created"
            if undone.master_rows_deleted
            else ""
        )
        out.print(
            f"rolled back import {undone.import_id}: deleted {undone.rows_deleted:,} row(s) "
            f"from {escape(undone.target_table)}, restored {undone.rows_restored:,}{masters}",
            highlight=False,
        )


@app.command("cleanup")
def cleanup(
    older_than: Annotated[
        int, typer.Option("--older-than", min=0, help="Retention period in days.")
    ] = 30,
) -> None:
    """Remove failed-row records and error files past the retention period (history is kept),
    mark imports whose worker died failed, and drop leftover staging tables of imports that
    are not running."""
    with tracked() as (settings, db):
        counts = history.cleanup(
            db,
            older_than,
            error_dir=settings.home / "errors",
            actor=user(),
            stale_after=timedelta(seconds=settings.stale_after_seconds),
        )
    out.print(
        f"failed {counts['dead_imports_failed']:,} import(s) left running by a dead worker; "
        f"removed {counts['failed_rows_deleted']:,} failed-row record(s) and "
        f"{counts['error_files_deleted']:,} error file(s) older than {older_than} day(s); "
        f"dropped {counts['staging_tables_dropped']:,} leftover staging table(s). "
        "Import history is kept.",
        highlight=False,
    )


@app.command("demo")
def demo() -> None:
    """Write demo dataset specs, a master table and messy sample files into HISTIMPORT_HOME.

    Migrates the database first (as scripts/run.sh does): the demo is a first start.
    """
    with session() as (settings, db):
        applied = migrations.upgrade(db)
        result = write_demo(settings, db)
    if applied:
        out.print(f"migrated {db.masked_url} to {applied[-1]}", highlight=False)
    out.print(
        f"wrote {len(result.specs)} dataset specs to {settings.datasets}, "
        f"{len(result.files)} files to {settings.inbox}, "
        f"and {result.master_rows} rows into the master table ambassadors",
        highlight=False,
    )
    out.print(
        "with the Dagster UI running (scripts/run.sh), the inbox sensors import them; "
        "or import one now: histimport import FILE",
        highlight=False,
    )


@app.command("retry-failed")
def retry_failed(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only imports since (ISO date or age: 12h, 7d).")
    ] = None,
    url: Annotated[
        str, typer.Option(envvar="HISTIMPORT_DAGSTER_URL", help="Dagster webserver URL.")
    ] = "http://127.0.0.1:3000",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, launch nothing.")] = False,
) -> None:
    """Launch runs for partitions whose latest import failed, through the Dagster webserver."""
    with tracked() as (settings, db):
        cutoff = history.parse_since(since) if since else None
        failed = history.failed_partitions(db, dataset, cutoff)
    if not failed:
        out.print("no failed partitions")
        return
    client = None
    specs = load_specs(settings.datasets)
    if not dry_run:
        from urllib.parse import urlparse

        from dagster_graphql import DagsterGraphQLClient

        from histimport_pipeline.assets import parse_run_config

        parsed = urlparse(url)
        client = DagsterGraphQLClient(
            parsed.hostname or "127.0.0.1",
            port_number=parsed.port,
            use_https=parsed.scheme == "https",
        )
    launched = 0
    for item in failed:
        name, key = item["dataset"], item["partition_key"]
        if client is None:
            out.print(
                f"would retry {name} partition {key} (import {item['import_id']})", highlight=False
            )
            continue
        config = (
            parse_run_config(specs[name], item["file_path"])
            if item["file_path"] and name in specs
            else {}
        )
        try:
            run_id = client.submit_job_execution(
                f"{name}_import_job",
                run_config=config,
                tags={
                    "dagster/partition": key,
                    "histimport/dataset": name,
                    "histimport/trigger": "retry",
                    "histimport/retry_of": str(item["import_id"]),
                },
            )
        except Exception as exc:  # the webserver answers with its own error types
            err.print(f"[red]error:[/red] could not launch {name} {key}: {escape(str(exc))}")
            raise typer.Exit(2) from None
        launched += 1
        out.print(
            f"launched run {run_id} for {name} partition {key} "
            f"(retrying import {item['import_id']})",
            highlight=False,
        )
    if client is not None:
        out.print(f"{launched} run(s) launched; watch them at {url}/runs", highlight=False)


@app.command("dagster-url")
def dagster_url() -> None:
    """Print HISTIMPORT_DATABASE_URL as a URL for Dagster's PostgreSQL instance storage."""
    try:
        settings = Settings.from_env()
        sys.stdout.write(dagster_instance_url(settings.database_url) + "\n")
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def main() -> None:
    """Console-script entry point: no traceback reaches a user (see ``fail_unexpected``)."""
    try:
        app()
    except Exception as exc:
        fail_unexpected(exc)


if __name__ == "__main__":
    main()
