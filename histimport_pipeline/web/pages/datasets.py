"""The datasets page (``/datasets``: status, last success, freshness, activity charts) and
the lineage page (``/lineage``: which imports wrote a table's rows, and one row by key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.tracking import lineage, overview
from histimport_pipeline.web.app import Reader, State
from histimport_pipeline.web.pages import charts, render

router = APIRouter()
#: Days the activity charts cover.
DAYS = 30


@router.get("/datasets")
def datasets_page(request: Request, state: State, caller: Reader) -> Response:
    """Each dataset: its processes, last import and success, freshness, and charts of the
    last days' imports by status and rows loaded."""
    specs = state.specs()
    entries: list[dict[str, Any]] = []
    for entry in overview.dataset_overview(state.db, specs):
        activity = overview.daily_activity(state.db, entry["name"], DAYS)
        entries.append(
            entry
            | {
                "activity": activity,
                "imports_chart": charts.imports_per_day(activity),
                "rows_chart": charts.rows_per_day(activity),
                "statuses": sorted({s for day in activity for s in day["by_status"]}),
            }
        )
    return render(
        request,
        "datasets.html",
        caller=caller,
        datasets=entries,
        days=DAYS,
        width=charts.WIDTH,
    )


def _key_parts(text: str, key_columns: list[str]) -> list[str]:
    """The key typed in the form: one value, or ``a=1, b=2`` for a composite key."""
    if len(key_columns) > 1:
        return [part.strip() for part in text.split(",") if part.strip()]
    return [text.strip()]


@router.get("/lineage")
def lineage_page(request: Request, state: State, caller: Reader) -> Response:
    """A table's contributing imports with their row counts (and rows that predate
    histimport); with ``key``, which import wrote that one row, from which file and row."""
    specs = state.specs()
    tables = sorted({s.target_table for s in specs.values()})
    table = request.query_params.get("table", "").strip()
    key = request.query_params.get("key", "").strip()
    found: dict[str, Any] | None = None
    row: dict[str, Any] | None = None
    key_columns: list[str] = []
    problem = None
    if table:
        try:
            found = lineage.lineage(state.db, table)
            spec = next((s for s in specs.values() if s.target_table == table), None)
            key_columns = list(spec.key) if spec else []
            if key:
                spec = lineage.spec_of_table(specs, table, "the datasets folder")
                values = lineage.key_values(spec, _key_parts(key, key_columns))
                row = lineage.lineage_of_key(state.db, spec, values)
                if row is None:
                    problem = f"no row with key {key} in {table}"
        except HistimportError as exc:
            problem = str(exc)
    return render(
        request,
        "lineage.html",
        caller=caller,
        tables=tables,
        table=table,
        key=key,
        key_columns=key_columns,
        found=found,
        row=row,
        problem=problem,
    )
