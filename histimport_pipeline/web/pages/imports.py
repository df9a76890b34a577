"""The imports listing (``/`` and ``/imports``) and one import (``/imports/{id}``), with the
operators' forms: review decisions, applying them, and rollback after a confirmation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.models import ImportStatus, MatchDecision
from histimport_pipeline.engine.reconciliation.review import (
    apply_review,
    decide_match,
    list_matches,
)
from histimport_pipeline.engine.rollback import rollback_import, rollback_preview
from histimport_pipeline.engine.tracking import history, overview
from histimport_pipeline.web.app import Reader, State, WebState
from histimport_pipeline.web.auth import CSRF_FIELD, Caller, require_operator
from histimport_pipeline.web.pages import charts, page_link, render, templates

router = APIRouter()
#: The listing's columns a header click sorts by, with their headings.
COLUMNS = {
    "import_id": "ID",
    "dataset": "Dataset",
    "file_name": "File",
    "status": "Status",
    "started_at": "Started",
    "total_seconds": "Duration",
    "rows_in_file": "Read",
    "rows_created": "Created",
    "rows_updated": "Updated",
    "rows_unchanged": "Unchanged",
    "rows_failed": "Failed",
    "user_id": "User",
}
PER_PAGE = 25
#: Failed rows shown on an import's page (the CSV has them all).
FAILED_ROWS_SHOWN = 20
_FILTERS = ("dataset", "status", "since", "until", "file")


def _whole(text: str | None, default: int, low: int, high: int) -> int:
    """A whole number from the query, kept within ``low..high`` (a typo gives the default)."""
    try:
        return min(max(int(text or default), low), high)
    except ValueError:
        return default


def _filters(params: dict[str, str]) -> tuple[history.HistoryFilter, list[str]]:
    """The listing's filters from the query, and what was wrong with any of them."""
    problems: list[str] = []
    status = params.get("status") or None
    if status is not None and status not in {s.value for s in ImportStatus}:
        problems.append(
            f"status {status!r} is not one of {', '.join(s.value for s in ImportStatus)}"
        )
        status = None
    since = until = None
    try:
        since = history.parse_since(params["since"]) if params.get("since") else None
    except HistimportError as exc:
        problems.append(str(exc).replace("--since", "since"))
    try:
        until = history.parse_until(params["until"]) if params.get("until") else None
    except HistimportError as exc:
        problems.append(str(exc).replace("--until", "until"))
    found = history.HistoryFilter(
        dataset=params.get("dataset") or None,
        status=status,
        since=since,
        until=until,
        file=params.get("file") or None,
    )
    return found, problems


@router.get("/")
@router.get("/imports")
def imports_page(request: Request, state: State, caller: Reader) -> Response:
    """Imports, newest first: filters, search by file name, sortable columns, pages; running
    imports show a progress bar that ``app.js`` keeps up to date."""
    query = request.query_params
    params = {k: query.get(k, "").strip() for k in _FILTERS}
    filters, problems = _filters(params)
    sort = query.get("sort", history.DEFAULT_SORT)
    if sort.lstrip("+-") not in COLUMNS:
        if "sort" in query:
            problems.append(f"cannot sort by {sort!r}; click a column's heading")
        sort = history.DEFAULT_SORT
    per_page = _whole(query.get("per_page"), PER_PAGE, 1, 500)
    page = _whole(query.get("page"), 1, 1, 1_000_000)
    listing = history.list_imports(
        state.db, filters, sort=sort, limit=per_page, offset=(page - 1) * per_page
    )
    total = listing["total_count"]
    pages = max(1, -(-total // per_page))
    kept = {**params, "sort": sort if sort != history.DEFAULT_SORT else "", "per_page": ""}
    if per_page != PER_PAGE:
        kept["per_page"] = str(per_page)
    sort_name, descending = history.parse_sort(sort)
    headings = []
    for column, label in COLUMNS.items():
        active = column == sort_name
        # A first click sorts newest/largest first for numbers and times, A-Z for text.
        first = "" if column in ("dataset", "file_name", "status", "user_id") else "-"
        target = (column if descending else f"-{column}") if active else f"{first}{column}"
        headings.append(
            {
                "label": label,
                "column": column,
                "href": page_link("/imports", kept, sort=target, page=""),
                "aria_sort": ("descending" if descending else "ascending") if active else None,
            }
        )
    return render(
        request,
        "imports.html",
        caller=caller,
        imports=listing["imports"],
        total=total,
        page=page,
        pages=pages,
        first_row=(page - 1) * per_page + 1 if listing["imports"] else 0,
        last_row=(page - 1) * per_page + len(listing["imports"]),
        prev_href=page_link("/imports", kept, page=page - 1) if page > 1 else None,
        next_href=page_link("/imports", kept, page=page + 1) if page < pages else None,
        headings=headings,
        params=params,
        kept_sort=kept["sort"],
        kept_per_page=kept["per_page"],
        problems=problems,
        datasets=sorted(state.specs()),
        statuses=[s.value for s in ImportStatus],
        active=set(history.ACTIVE),
    )


@router.get("/imports/{import_id}")
def import_page(import_id: int, request: Request, state: State, caller: Reader) -> Response:
    """Everything about one import: summary, phase timings, errors, the first failed rows,
    reconciliation decisions, the audit trail, and the links to its CSV and Dagster run."""
    detail = history.get_import_detail(state.db, import_id)
    run = detail.get("dagster_run_id")
    dagster = state.config.dagster_url
    matches = list_matches(state.db, import_id=import_id, decision=None, limit=500)
    waiting = {m["match_id"] for m in list_matches(state.db, import_id=import_id, limit=500)}
    return render(
        request,
        "import.html",
        caller=caller,
        d=detail,
        phases=charts.phase_bar(detail.get("phase_seconds") or {}),
        failed=overview.first_failed_rows(state.db, import_id, FAILED_ROWS_SHOWN),
        matches=matches,
        waiting=waiting,
        can_apply=detail["status"] == ImportStatus.PARTIAL.value
        and (detail.get("rows_review") or 0) > 0,
        can_roll_back=detail["status"] in history.LOADED and detail.get("archived_at") is None,
        dagster_run=f"{dagster}/runs/{run}" if dagster and run else None,
        running=detail["status"] in history.ACTIVE,
        needs_review=MatchDecision.NEEDS_REVIEW.value,
        notice=request.query_params.get("notice", ""),
    )


async def _operator(request: Request, state: WebState, caller: Caller) -> dict[str, str]:
    """The posted form, once the caller is known to be an operator with the form's CSRF
    token (else the refusal is raised: 403)."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    require_operator(caller, state.config, fields.get(CSRF_FIELD))
    return fields


def _back(import_id: int, notice: str) -> RedirectResponse:
    return RedirectResponse(page_link(f"/imports/{import_id}", {"notice": notice}), 303)


@router.post("/imports/{import_id}/reviews/{match_id}/{verdict}")
async def decide(
    import_id: int, match_id: int, verdict: str, request: Request, state: State, caller: Reader
) -> Response:
    """Accept (as the chosen candidate or a typed id) or reject a value waiting for review,
    as the signed-in operator; back to the import's page."""
    fields = await _operator(request, state, caller)
    if verdict not in ("accept", "reject"):
        raise HistimportError(f"{verdict!r}: a review is decided by accept or reject")
    accept = verdict == "accept"
    entity_id = ((fields.get("entity_id") or "").strip() or None) if accept else None
    decided = decide_match(
        state.db, match_id, accept=accept, entity_id=entity_id, actor=caller.label
    )
    what = f"as {decided.get('matched_id')}" if accept else "rejected"
    return _back(import_id, f"value {match_id} decided: {what}; load the held rows when ready")


@router.post("/imports/{import_id}/reviews/apply")
async def apply(import_id: int, request: Request, state: State, caller: Reader) -> Response:
    """Load the rows held for review whose values are decided; back to the import's page."""
    await _operator(request, state, caller)
    dataset = history.import_progress(state.db, import_id)["dataset"]
    result = apply_review(state.db, state.spec(dataset), import_id, actor=caller.label)
    return _back(
        import_id,
        f"loaded {result['rows_loaded']:,} held row(s); {result['rows_still_held']:,} still "
        f"wait for a decision; status {result['status']}",
    )


@router.get("/imports/{import_id}/rollback")
def rollback_page(import_id: int, request: Request, state: State, caller: Reader) -> Response:
    """The confirmation step: what a rollback of this import would undo, and the button."""
    return render(
        request,
        "rollback.html",
        caller=caller,
        p=rollback_preview(state.db, import_id),
    )


@router.post("/imports/{import_id}/rollback")
async def rollback(import_id: int, request: Request, state: State, caller: Reader) -> Response:
    """Roll the import back (with ``cascade``: the later imports that depend on it too), as
    the signed-in operator; back to the import's page."""
    fields = await _operator(request, state, caller)
    result = rollback_import(
        state.db, import_id, cascade=fields.get("cascade") == "1", actor=caller.label
    )
    if result.already:
        return _back(import_id, f"import {import_id} was rolled back already")
    if result.nothing_loaded:
        return _back(import_id, f"import {import_id} loaded nothing; nothing to undo")
    done = "; ".join(
        f"import {u.import_id}: deleted {u.rows_deleted:,} row(s) from {u.target_table}, "
        f"restored {u.rows_restored:,}"
        for u in result.undone
    )
    return _back(import_id, f"rolled back {done}")


def summary_counts(row: dict[str, Any]) -> list[tuple[str, Any]]:
    """An import's counts in the order the pages show them."""
    return [
        ("read", row.get("rows_in_file")),
        ("created", row.get("rows_created")),
        ("updated", row.get("rows_updated")),
        ("unchanged", row.get("rows_unchanged")),
        ("failed", row.get("rows_failed")),
        ("duplicates", row.get("rows_duplicate")),
        ("waiting for review", row.get("rows_review")),
        ("deleted (replaced day)", row.get("rows_deleted")),
    ]


templates.env.globals["summary_counts"] = summary_counts
