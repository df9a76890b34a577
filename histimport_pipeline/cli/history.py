"""``histimport history``, ``show``, ``errors``, ``stats`` and ``lineage``: the commands that
report on recorded imports (``--json`` for scripts, tables for people)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from histimport_pipeline.cli.common import (
    err,
    line,
    num,
    out,
    print_json,
    secs,
    status_markup,
    tracked,
    when,
)
from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.models import ImportStatus

if TYPE_CHECKING:
    from histimport_pipeline.engine.settings import Settings
    from histimport_pipeline.engine.spec import DatasetSpec

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


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
    from histimport_pipeline.engine.tracking import history

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
            status_markup(r["status"]),
            escape(r["file_name"] or ""),
            when(r["started_at"]),
            num(r["rows_in_file"]),
            num(r["rows_created"]),
            num(r["rows_updated"]),
            num(r["rows_unchanged"]),
            num(r["rows_failed"]),
            secs(r["total_seconds"]),
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
    from histimport_pipeline.engine.tracking import history

    if isinstance(value, Mapping | list):
        return escape(json.dumps(history.jsonable(value), ensure_ascii=False))
    if isinstance(value, datetime):
        return when(value)
    return escape("" if value is None else str(value))


def show_import(
    import_id: Annotated[int, typer.Argument(help="The import id (see `histimport history`).")],
    as_json: JsonOption = False,
) -> None:
    """Show everything recorded about one import."""
    from histimport_pipeline.engine.tracking import history

    with tracked() as (_settings, db):
        detail = history.get_import_detail(db, import_id)
    if as_json:
        print_json(detail)
        return
    out.print(f"[bold]import {import_id}[/bold]: {status_markup(detail['status'])}")
    fields = Table.grid(padding=(0, 2))
    for name in _SHOW_FIELDS:
        if detail.get(name) is not None:
            value = status_markup(detail[name]) if name == "status" else _compact(detail[name])
            fields.add_row(name, value)
    counts = " | ".join(
        f"{name.removeprefix('rows_')} {num(detail[name])}"
        for name in _SHOW_COUNTS
        if detail.get(name) is not None
    )
    if counts:
        fields.add_row("rows", counts)
    if detail.get("phase_seconds"):
        seconds = " | ".join(f"{k} {secs(v)}" for k, v in detail["phase_seconds"].items())
        fields.add_row("seconds", f"{seconds} | total {secs(detail.get('total_seconds'))}")
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
            when(entry["created_at"]),
            escape(entry["action"]),
            escape(entry["actor"] or ""),
            _compact(entry["details"]) if entry["details"] else "",
        )
    out.print(trail)


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
    from histimport_pipeline.engine.tracking import failed_rows

    with tracked() as (settings, db):
        path = output or settings.home / "errors" / f"import_{import_id}_errors.csv"
        written = failed_rows.export_failed_rows(db, import_id, path)
    out.print(f"wrote {written:,} failed row(s) of import {import_id} to {escape(str(path))}")


def show_stats(
    days: Annotated[int, typer.Option(min=1, help="Look back this many days.")] = 30,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Per dataset: imports by status, rows loaded and failed, seconds spent."""
    from histimport_pipeline.engine.tracking import history

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
            num(r["imports"]),
            escape(by_status),
            num(r["rows_loaded"]),
            num(r["rows_failed"]),
            secs(r["mean_seconds"]),
            secs(r["total_seconds"]),
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
    from histimport_pipeline.engine.spec import load_specs

    specs = [s for s in load_specs(settings.datasets).values() if s.target_table == table]
    if not specs:
        raise HistimportError(
            f"no dataset spec in {settings.datasets} writes table {table!r}, so its key "
            "columns are unknown"
        )
    return specs[0]


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
    from histimport_pipeline.engine.tracking import history

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
                when(r["started_at"]),
                status_markup(r["status"]) if r["status"] else "",
                num(r["rows"]),
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
    line("written by", f"import {found['import_id']} ({escape(str(imp.get('status')))})")
    line("file", escape(str(imp.get("file_name"))) + f", source row {found['source_row']}")
    if imp.get("file_path"):
        line("path", escape(str(imp["file_path"])))
    line("loaded at", when(found["loaded_at"]) + " UTC")
    if imp.get("triggered_by"):
        line("by", escape(str(imp["triggered_by"])))
    line("values", _compact(found["row"]))
