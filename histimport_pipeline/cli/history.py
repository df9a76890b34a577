"""``histimport history``, ``show``, ``errors`` and ``stats``: the commands that report on
recorded imports (``--json`` for scripts, tables for people); ``lineage`` is in :mod:`.lineage`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from histimport_pipeline.cli.common import (
    line,
    num,
    out,
    print_json,
    reading,
    secs,
    status_markup,
    tracked,
    when,
)
from histimport_pipeline.cli.imports import EXIT_IMPORT_FAILED
from histimport_pipeline.cli.watch import follow, progress_text
from histimport_pipeline.engine.models import ImportStatus

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def show_history(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    status: Annotated[ImportStatus | None, typer.Option(help="Only this status.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only imports since a date (2024-01-31) or an age (7d, 12h, 30m)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="Only imports before a timestamp, an age (7d: older than a week), or up to "
            "and including a date (2024-01-31)."
        ),
    ] = None,
    file: Annotated[
        str | None, typer.Option("--file", help="Only files whose name contains this (any case).")
    ] = None,
    table: Annotated[str | None, typer.Option(help="Only imports into this target table.")] = None,
    user: Annotated[
        str | None, typer.Option(help="Only imports of this user (user id or e-mail).")
    ] = None,
    sort: Annotated[
        str,
        typer.Option(help="Sort by a column of the listing; a leading - sorts descending."),
    ] = "-import_id",  # history.DEFAULT_SORT, spelled out: the module loads on demand
    limit: Annotated[int, typer.Option(min=1, help="At most this many imports.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip the first OFFSET imports.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """List imports, newest first (or by --sort); --json gives {imports, total_count, ...}."""
    from histimport_pipeline.engine.tracking import history

    with reading() as (_settings, db):
        filters = history.HistoryFilter(
            dataset=dataset,
            status=status.value if status else None,
            since=history.parse_since(since) if since else None,
            until=history.parse_until(until) if until else None,
            file=file,
            table=table,
            user=user,
        )
        page = history.list_imports(db, filters, sort, limit, offset)
    if as_json:
        print_json(page)
        return
    rows = page["imports"]
    if not rows:
        filtered = any((dataset, status, since, until, file, table, user, offset))
        out.print("no imports match" if filtered else "no imports yet")
        return
    grid = Table(
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
        "progress",
        "schema",
    )
    for r in rows:
        grid.add_row(
            str(r["import_id"]),
            escape(r["dataset"]),
            status_markup(r["status"]),
            escape(r["file_name"] or ""),
            when(r["started_at"]),
            num(r["rows_in_file"]),
            num(r["rows_created"]),
            num(r["rows_updated"]),
            num(r["rows_unchanged"]),
            num(r["rows_failed"]),
            secs(r["total_seconds"]),
            escape(r["user_id"] or r["triggered_by"] or ""),
            # Only a running import's: a finished one says it all in its status and counts.
            escape(progress_text(r)) if r["status"] in history.ACTIVE else "",
            _drift_marker(r["schema_drift"]),
        )
    out.print(grid)
    shown_to = offset + len(rows)
    total = page["total_count"]
    more = f" (next: --offset {shown_to})" if shown_to < total else ""
    out.print(f"[dim]imports {offset + 1}-{shown_to} of {total}{more}[/dim]")


def _drift_marker(drift: Mapping[str, Any] | None) -> str:
    """``drift +1 -1 ~1``: the import's columns differ from the previous successful one's
    (added, removed, renamed)."""
    if not drift:
        return ""
    counts = [
        f"{sign}{len(drift.get(key) or ())}"
        for sign, key in (("+", "added"), ("-", "removed"), ("~", "renamed"))
        if drift.get(key)
    ]
    return "[yellow]drift[/yellow]" + (" " + " ".join(counts) if counts else "")


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
    "user_id",
    "user_email",
    "corrects_import_id",
    "superseded_by",
    "triggered_by",
    "worker",
    "created_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "error_message",
    "error_file_path",
    "archived_at",
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
_SHOW_MASTERS = ("master_rows_created", "master_rows_linked")


def compact(value: Any) -> str:
    """A value on one line: JSON for mappings and lists, UTC time for datetimes."""
    from histimport_pipeline.engine.tracking import history

    if isinstance(value, Mapping | list):
        return escape(json.dumps(history.jsonable(value), ensure_ascii=False))
    if isinstance(value, datetime):
        return when(value)
    return escape("" if value is None else str(value))


def show_import(
    import_id: Annotated[int, typer.Argument(help="The import id (see `histimport history`).")],
    as_json: JsonOption = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow a running import's progress until it ends, then show it; exit 1 "
            "when it ended failed or rejected, as `histimport import` does.",
        ),
    ] = False,
) -> None:
    """Show everything recorded about one import."""
    from histimport_pipeline.engine.tracking import history

    with reading() as (settings, db):
        if watch:
            follow(settings, db, import_id)
        detail = history.get_import_detail(db, import_id)
    if as_json:
        print_json(detail)
    else:
        _print_detail(import_id, detail)
    if watch and detail["status"] in (ImportStatus.FAILED.value, ImportStatus.REJECTED.value):
        raise typer.Exit(EXIT_IMPORT_FAILED)


def _print_detail(import_id: int, detail: Mapping[str, Any]) -> None:
    out.print(f"[bold]import {import_id}[/bold]: {status_markup(detail['status'])}")
    fields = Table.grid(padding=(0, 2))
    for name in _SHOW_FIELDS:
        # triggered_by is the older name of user_id: shown only where the two differ.
        if name == "triggered_by" and detail.get(name) == detail.get("user_id"):
            continue
        if detail.get(name) is not None:
            value = status_markup(detail[name]) if name == "status" else compact(detail[name])
            fields.add_row(name, value)
    counts = " | ".join(
        f"{name.removeprefix('rows_')} {num(detail[name])}"
        for name in _SHOW_COUNTS
        if detail.get(name) is not None
    )
    if counts:
        fields.add_row("rows", counts)
    masters = " | ".join(
        f"{name.removeprefix('master_rows_')} {num(detail[name])}"
        for name in _SHOW_MASTERS
        if detail.get(name) is not None
    )
    if masters:
        fields.add_row("master rows", masters)
    if detail.get("progress_updated_at") is not None:
        fields.add_row(
            "progress", f"{escape(progress_text(detail))}, at {when(detail['progress_updated_at'])}"
        )
    if detail.get("phase_seconds"):
        seconds = " | ".join(f"{k} {secs(v)}" for k, v in detail["phase_seconds"].items())
        fields.add_row("seconds", f"{seconds} | total {secs(detail.get('total_seconds'))}")
    _schema_rows(fields, detail)
    drifted = (detail.get("schema_drift") or {}).get("message")
    shown = {**detail, "warnings": [w for w in detail.get("warnings") or [] if w != drifted]}
    for name in ("file_metadata", "column_mapping", "warnings", "reconciliation"):
        if shown.get(name):
            fields.add_row(name, compact(shown[name]))
    failed = detail["failed_rows"]
    fields.add_row(
        "failed rows kept",
        f"{failed['total']:,}" + (f" {compact(failed['by_category'])}" if failed["total"] else ""),
    )
    processed = detail.get("processed_file")
    if processed:
        fields.add_row("processed file", _processed_file(processed))
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
    trail = Table("when (UTC)", "severity", "action", "actor", "summary", title="audit trail")
    for entry in detail["audit_trail"]:
        trail.add_row(
            when(entry["created_at"]),
            _severity_markup(entry["severity"]),
            escape(entry["action"]),
            escape(entry["actor"] or ""),
            escape(entry["summary"]),
        )
    out.print(trail)
    out.print(f"[dim]every entry's details: histimport show {import_id} --json[/dim]")


_SEVERITY_STYLE = {"warning": "yellow", "error": "red"}


def _severity_markup(value: str) -> str:
    style = _SEVERITY_STYLE.get(value)
    return f"[{style}]{escape(value)}[/{style}]" if style else escape(value)


def _processed_file(row: Mapping[str, Any]) -> str:
    """The content's ``processed_files`` row on one line: status, type, records, when."""
    parts = [escape(str(row["status"]))]
    if row.get("file_type"):
        parts.append(escape(str(row["file_type"])))
    if row.get("records_count") is not None:
        parts.append(f"{num(row['records_count'])} records")
    if row.get("process_date"):
        parts.append(f"processed {row['process_date']}")
    parts.append(f"seen {num(row['times_seen'])}x")
    return ", ".join(parts)


def _schema_rows(fields: Table, detail: Mapping[str, Any]) -> None:
    """The schema the import read, its drift and the spec it used, as rows of ``show``."""
    if detail.get("schema_fingerprint"):
        header = "no header row (by position)" if detail.get("header_present") is False else ""
        fields.add_row(
            "schema", escape(detail["schema_fingerprint"]) + (f", {header}" if header else "")
        )
    drift = detail.get("schema_drift")
    if drift:
        fields.add_row("schema drift", f"[yellow]{escape(str(drift.get('message')))}[/yellow]")
    spec = detail.get("spec_used")
    if isinstance(spec, Mapping):
        key = ", ".join(spec.get("key") or ()) or "none"
        fields.add_row(
            "spec used",
            escape(
                f"{len(spec.get('columns') or {})} columns, {len(spec.get('references') or {})} "
                f"references, strategy {spec.get('strategy')}, key {key} "
                f"(all of it: histimport show {detail['import_id']} --json)"
            ),
        )


def export_errors(
    import_id: Annotated[int, typer.Argument(help="The import id.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="CSV file to write (default: the import's error file, "
            "$HISTIMPORT_ERROR_DIR/import_ID_errors.csv, which `histimport cleanup` removes "
            "after the retention period).",
        ),
    ] = None,
) -> None:
    """Write the failed rows of an import as CSV: original columns plus _error_* columns."""
    from histimport_pipeline.engine.tracking import failed_rows

    with tracked() as (settings, db):
        path = output or settings.error_dir / failed_rows.error_file_name(import_id)
        written = failed_rows.export_failed_rows(db, import_id, path)
    out.print(f"wrote {written:,} failed row(s) of import {import_id} to {escape(str(path))}")


def show_stats(
    days: Annotated[int, typer.Option(min=1, help="Look back this many days.")] = 30,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    table: Annotated[str | None, typer.Option(help="Only imports into this target table.")] = None,
    user: Annotated[
        str | None, typer.Option(help="Only imports of this user (user id or e-mail).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Per dataset and overall: imports by status and by user, rows loaded, failed and
    duplicate, seconds spent, tables affected and users."""
    from histimport_pipeline.engine.tracking import history

    with reading() as (_settings, db):
        figures = history.stats(db, days, dataset, table=table, user=user)
    if as_json:
        print_json(figures)
        return
    rows, totals = figures["datasets"], figures["totals"]
    if not rows:
        out.print(f"no imports in the last {days} days")
        return
    grid = Table(
        "dataset",
        "imports",
        "by status",
        "rows loaded",
        "rows failed",
        "rows duplicate",
        "mean s",
        "total s",
        "by user",
        title=f"last {days} days",
    )
    for r in [*rows, {**totals, "dataset": "all"}]:
        by_status = ", ".join(f"{s} {n}" for s, n in r["by_status"].items())
        by_user = ", ".join(f"{u} {n}" for u, n in r["by_user"].items())
        grid.add_row(
            escape(r["dataset"]),
            num(r["imports"]),
            escape(by_status),
            num(r["rows_loaded"]),
            num(r["rows_failed"]),
            num(r["rows_duplicate"]),
            secs(r["mean_seconds"]),
            secs(r["total_seconds"]),
            escape(by_user),
            end_section=r is rows[-1],
        )
    out.print(grid)
    line("duplicates", f"{totals['duplicate_imports']:,} file(s) already imported")
    line("tables", f"{totals['tables_affected']:,}: " + escape(", ".join(totals["tables"])))
    line("users", f"{totals['distinct_users']:,}: " + escape(", ".join(totals["users"])))
