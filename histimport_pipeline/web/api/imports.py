"""``/api/imports``: the history, one import, its live status, its failed rows, the rows it
wrote; rollback and applying review decisions for operators."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import StreamingResponse

from histimport_pipeline.engine.models import ImportSource, ImportStatus
from histimport_pipeline.engine.rollback import rollback_import
from histimport_pipeline.engine.tracking import failed_rows, history, lineage
from histimport_pipeline.web import schemas
from histimport_pipeline.web.app import Operator, Reader, State, WebState

router = APIRouter(tags=["imports"])
#: Statuses after which an import does not change on its own.
_ENDED = frozenset(s.value for s in ImportStatus) - set(history.ACTIVE)


def links(state: WebState, request: Request, row: dict[str, Any]) -> dict[str, Any]:
    """Where one import is on the API, the page and the Dagster UI."""
    import_id = row["import_id"]
    base = str(request.base_url).rstrip("/")
    run = row.get("dagster_run_id")
    dagster = state.config.dagster_url
    failed = (row.get("rows_failed") or 0) > 0 or bool(row.get("error_file_path"))
    return {
        "dagster_run": f"{dagster}/runs/{run}" if dagster and run else None,
        "failed_rows_csv": f"{base}/api/imports/{import_id}/errors" if failed else None,
        "status": f"{base}/api/imports/{import_id}/status",
        "page": f"{base}/imports/{import_id}",
    }


def summary(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    """A history row as the API shows it: ``rows_inserted`` beside ``rows_created``, and
    its own URLs."""
    base = str(request.base_url).rstrip("/")
    return {
        **row,
        "rows_inserted": row.get("rows_created"),
        "url": f"{base}/api/imports/{row['import_id']}",
        "page_url": f"{base}/imports/{row['import_id']}",
    }


def history_filter(
    dataset: str | None = None,
    table: str | None = None,
    status: ImportStatus | None = None,
    user: str | None = None,
    source: ImportSource | None = None,
    since: str | None = None,
    until: str | None = None,
    file: str | None = None,
) -> history.HistoryFilter:
    """The listing's filters; ``since``/``until`` take a date (2024-01-31), an instant
    (ISO 8601) or an age (7d, 12h, 30m, 2w)."""
    return history.HistoryFilter(
        dataset=dataset or None,
        status=status.value if status else None,
        since=history.parse_since(since) if since else None,
        until=history.parse_until(until) if until else None,
        file=file or None,
        table=table or None,
        user=user or None,
        source=source.value if source else None,
    )


@router.get("/imports", response_model=schemas.ImportList)
def list_imports(
    request: Request,
    state: State,
    _caller: Reader,
    dataset: str | None = None,
    table: str | None = None,
    status: ImportStatus | None = None,
    user: str | None = None,
    source: ImportSource | None = None,
    since: Annotated[str | None, Query(description="date, ISO instant or age: 7d")] = None,
    until: Annotated[str | None, Query(description="date, ISO instant or age")] = None,
    file: Annotated[str | None, Query(description="part of the file name, any case")] = None,
    sort: Annotated[
        str, Query(description="a listed column; a leading - sorts descending")
    ] = history.DEFAULT_SORT,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Imports, newest first by default, with ``total_count`` over all pages."""
    filters = history_filter(dataset, table, status, user, source, since, until, file)
    page = history.list_imports(state.db, filters, sort=sort, limit=limit, offset=offset)
    page["imports"] = [summary(request, row) for row in page["imports"]]
    return page


@router.get("/imports/{import_id}", response_model=schemas.ImportDetail)
def get_import(import_id: int, request: Request, state: State, _caller: Reader) -> dict[str, Any]:
    """Everything recorded about one import: counts, phases, file, warnings, errors,
    reconciliation, audit trail, and links to its Dagster run and failed rows."""
    detail = history.get_import_detail(state.db, import_id)
    return {**summary(request, detail), "links": links(state, request, detail)}


@router.get("/imports/{import_id}/status", response_model=schemas.ImportStatus)
def get_status(import_id: int, state: State, _caller: Reader) -> dict[str, Any]:
    """Lifecycle and live progress; one small read, fine to poll every second."""
    row = history.import_progress(state.db, import_id)
    return {**row, "finished": row["status"] in _ENDED}


@router.get(
    "/imports/{import_id}/errors",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "the failed rows as CSV"}},
)
def get_errors(import_id: int, state: State, _caller: Reader) -> StreamingResponse:
    """The failed rows as CSV, streamed: the file's columns plus ``_error_row``,
    ``_error_column``, ``_error_category``, ``_error_message``; UTF-8 with a BOM; formula
    cells neutralised (the file ``histimport errors`` writes, byte for byte)."""
    pieces = failed_rows.failed_rows_csv(state.db, import_id)
    name = failed_rows.error_file_name(import_id)
    return StreamingResponse(
        (piece.encode("utf-8") for piece in pieces),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/imports/{import_id}/rows")
def get_rows(
    import_id: int,
    state: State,
    _caller: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """One page of the rows of the target table that this import wrote (and still holds)."""
    return lineage.rows_of_import(state.db, import_id, limit=limit, offset=offset)


@router.post("/imports/{import_id}/rollback", response_model=schemas.RollbackAnswer)
def post_rollback(
    import_id: int,
    state: State,
    caller: Operator,
    body: Annotated[schemas.RollbackRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Roll the import back exactly (``cascade``: with the later imports that changed its
    rows). 409 when later imports depend on it and ``cascade`` is off, or it was archived."""
    cascade = body.cascade if body else False
    result = rollback_import(state.db, import_id, cascade=cascade, actor=caller.label)
    return {
        "import_id": result.import_id,
        "already": result.already,
        "nothing_loaded": result.nothing_loaded,
        "undone": [vars(u) for u in result.undone],
    }


@router.post("/imports/{import_id}/review/apply")
def post_apply_review(import_id: int, state: State, caller: Operator) -> dict[str, Any]:
    """Load the rows held for review whose values are now decided."""
    from histimport_pipeline.engine.reconciliation.review import apply_review

    detail = history.import_progress(state.db, import_id)
    spec = state.spec(detail["dataset"])
    return apply_review(state.db, spec, import_id, actor=caller.label)
