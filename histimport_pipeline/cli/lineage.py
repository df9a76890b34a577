"""``histimport lineage``: which imports wrote a table's rows, where one row came from, and
the rows one import wrote."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from histimport_pipeline.cli.common import (
    err,
    line,
    num,
    out,
    print_json,
    status_markup,
    tracked,
    when,
)
from histimport_pipeline.cli.history import JsonOption, compact


def show_lineage(
    table: Annotated[
        str | None, typer.Argument(help="A target table (with --import: the import's own).")
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            "-k",
            help="The row's key: --key 42, or --key a=1 --key b=2 for a composite key.",
        ),
    ] = None,
    import_id: Annotated[
        int | None, typer.Option("--import", help="List the rows this import wrote.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --import: at most this many rows.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="With --import: skip OFFSET rows.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Which imports wrote the rows of TABLE; with --key, where one row came from; with
    --import, the rows one import wrote."""
    from histimport_pipeline.engine.tracking import lineage

    if import_id is not None:
        if key:
            raise typer.BadParameter("give --key or --import, not both")
        _show_rows_of_import(import_id, table, limit, offset, as_json)
        return
    if table is None:
        raise typer.BadParameter("name a table, or give --import ID")
    if key:
        _show_lineage_of_key(table, key, as_json)
        return
    with tracked() as (_settings, db):
        found = lineage.lineage(db, table)
    if as_json:
        print_json(found)
        return
    contributed = found["imports"]
    if not contributed and not found["rows_without_import"]:
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
    line("total", f"{found['total_rows']:,} row(s) from {found['total_imports']:,} import(s)")
    if found["rows_without_import"]:
        line("before", f"{found['rows_without_import']:,} row(s) predate histimport")


def _show_rows_of_import(
    import_id: int, table: str | None, limit: int, offset: int, as_json: bool
) -> None:
    from histimport_pipeline.engine.tracking import lineage

    with tracked() as (_settings, db):
        page = lineage.rows_of_import(db, import_id, table, limit, offset)
    if as_json:
        print_json(page)
        return
    rows, total = page["rows"], page["total_count"]
    if not rows:
        out.print(
            f"no rows of {escape(page['table'])} carry import {import_id}"
            + (f" past offset {offset}" if offset and total else "")
        )
        return
    grid = Table(
        *(escape(c) for c in rows[0]), title=f"rows of {page['table']} from import {import_id}"
    )
    for r in rows:
        grid.add_row(*(compact(v) for v in r.values()))
    out.print(grid)
    shown_to = offset + len(rows)
    more = f" (next: --offset {shown_to})" if shown_to < total else ""
    out.print(f"[dim]rows {offset + 1}-{shown_to} of {total}{more}[/dim]")


def _show_lineage_of_key(table: str, key: list[str], as_json: bool) -> None:
    from histimport_pipeline.engine.tracking import lineage

    with tracked() as (settings, db):
        from histimport_pipeline.engine.spec import load_specs

        spec = lineage.spec_of_table(load_specs(settings.datasets), table, settings.datasets)
        wanted = lineage.key_values(spec, key)
        found = lineage.lineage_of_key(db, spec, wanted)
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
    if found["import_id"] is None:
        line("written by", "no import: the row predates histimport (the table was adopted)")
        line("values", compact(found["row"]))
        return
    line("written by", f"import {found['import_id']} ({escape(str(imp.get('status')))})")
    line("file", escape(str(imp.get("file_name"))) + f", source row {found['source_row']}")
    if imp.get("file_path"):
        line("path", escape(str(imp["file_path"])))
    line("loaded at", when(found["loaded_at"]) + " UTC")
    by = imp.get("user_id") or imp.get("triggered_by")
    if by:
        email = f" <{imp['user_email']}>" if imp.get("user_email") else ""
        line("by", escape(f"{by}{email}"))
    line("values", compact(found["row"]))
