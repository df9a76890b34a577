"""Read side of the tracking tables: history, one import in detail and statistics (the
queries behind ``show``, ``history`` and ``stats``).

Plain queries for the CLI (and anyone else): every function takes a :class:`Database` or
the light :class:`~histimport_pipeline.engine.dbapi.Reader` (the report commands use it to
start without SQLAlchemy) and returns plain dicts. The queries are plain SQL over DB-API
(``engine.dbapi``), the same on both; identifiers quoted, values bound, the sort column
looked up in :data:`SORTABLE`. Timestamps come back as timezone-aware UTC datetimes on both
backends (SQLite hands back naive values that were stored as UTC). Lineage lives in
``tracking.lineage``, the retention cleanup in ``tracking.cleanup`` and the failed-rows CSV in
``tracking.failed_rows``.

Long because: the listing, the detail and the statistics share the filter, the sort and the
conversions, and the listing's page is read in two steps (ids, then rows) for speed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from histimport_pipeline.engine.dbapi import ReadSession, quote
from histimport_pipeline.engine.errors import HistimportError, ImportNotFoundError
from histimport_pipeline.engine.models import ImportStatus, utcnow
from histimport_pipeline.engine.tracking import columns

if TYPE_CHECKING:
    from histimport_pipeline.engine.db import Database
    from histimport_pipeline.engine.dbapi import Reader

#: A running import's live progress (see ``tracking.progress``).
PROGRESS_COLUMNS = ("rows_done", "rows_expected", "progress_percent", "progress_updated_at")
#: Columns of ``import_history`` shown in a listing (the full row is in :func:`get_import_detail`).
LIST_COLUMNS = (
    "import_id",
    "dataset",
    "target_table",
    "status",
    "phase",
    "import_type",
    "source",
    "partition_key",
    "business_date",
    "file_name",
    "rows_in_file",
    "rows_created",
    "rows_updated",
    "rows_unchanged",
    "rows_failed",
    "rows_duplicate",
    "rows_deleted",
    "total_seconds",
    "triggered_by",
    "user_id",
    "user_email",
    "started_at",
    "finished_at",
    "error_message",
    "schema_fingerprint",
    "schema_drift",
    "header_present",
    *PROGRESS_COLUMNS,
)
#: What ``import_progress`` reads: enough to follow a running import.
_PROGRESS_READ = (
    "import_id",
    "dataset",
    "file_name",
    "status",
    "phase",
    "worker",
    "heartbeat_at",
    *PROGRESS_COLUMNS,
)
ACTIVE = (ImportStatus.RUNNING.value, ImportStatus.PENDING.value)
#: The ``by_user`` key of ``stats`` for imports recorded without a user.
NO_USER = "(unknown)"
#: Columns a listing can be sorted by: the listing's own. A sort named by a user is looked
#: up here and never reaches SQL as text.
SORTABLE = tuple(c for c in LIST_COLUMNS if c != "schema_drift")
DEFAULT_SORT = "-import_id"
LOADED = (ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value)
_SINCE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.IGNORECASE)
_DATE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def as_utc(value: Any) -> Any:
    """A naive datetime read back from SQLite is UTC; make it say so."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def plain_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A result row as a dict of its columns, datetimes made timezone-aware UTC."""
    return {str(k): as_utc(v) for k, v in row.items()}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """Turn ``--since`` text into a UTC instant.

    Args:
        text: an ISO date or timestamp (``2024-01-31``, ``2024-01-31T12:00``; a timestamp
            without zone is UTC), or an age: a number with ``m``, ``h``, ``d`` or ``w``
            (``30m``, ``12h``, ``7d``, ``2w``).
        now: the current time (tests pass their own).

    Returns:
        The instant, timezone-aware UTC.

    Raises:
        HistimportError: the text is neither form.
    """
    return _instant(text, "--since", now)


def parse_until(text: str, now: datetime | None = None) -> datetime:
    """Turn ``--until`` text into the UTC instant before which imports count.

    Args:
        text: as for :func:`parse_since`; a bare date counts that whole day (``--until
            2024-01-31`` ends at midnight after it), an age its moment (``7d``: older than a
            week).
        now: the current time (tests pass their own).

    Raises:
        HistimportError: the text is neither a date, a timestamp nor an age.
    """
    if _DATE.match(text):
        day = date.fromisoformat(text.strip())
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
    return _instant(text, "--until", now)


def _instant(text: str, option: str, now: datetime | None) -> datetime:
    now = now or utcnow()
    age = _SINCE.match(text)
    if age:
        return now - timedelta(**{_UNITS[age.group(2).lower()]: int(age.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HistimportError(
            f"{option} {text!r} is neither a date (2024-01-31) nor an age (7d, 12h, 30m, 2w)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True)
class HistoryFilter:
    """Which imports a listing or the statistics cover; ``None`` sets no condition."""

    dataset: str | None = None
    status: str | None = None
    #: Created at or after this instant.
    since: datetime | None = None
    #: Created before this instant.
    until: datetime | None = None
    #: Part of the file name, any case (``--file 2024`` finds ``Signups_2024-01.csv``).
    file: str | None = None
    #: The target table.
    table: str | None = None
    #: Who imported: the ``user_id`` or the ``user_email``, exactly.
    user: str | None = None
    #: How the file arrived (``inbox``, ``cli``, ``schedule``, ``upload``...).
    source: str | None = None

    def where(self, dialect: str) -> tuple[str, list[Any]]:
        """The filter as the ``WHERE`` clause of a query on ``import_history`` (empty when it
        sets no condition) and the values it binds, for ``dialect`` (``sqlite`` or
        ``postgresql``)."""
        found: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("dataset", self.dataset),
            ("status", self.status),
            ("target_table", self.table),
            ("source", self.source),
        ):
            if value is not None:
                found.append(f"{quote(column)} = ?")
                params.append(value)
        if self.since is not None:
            found.append('"created_at" >= ?')
            params.append(self.since.astimezone(UTC))
        if self.until is not None:
            found.append('"created_at" < ?')
            params.append(self.until.astimezone(UTC))
        if self.file:
            # LIKE's own wildcards in the text are matched as themselves; any case: ILIKE on
            # PostgreSQL, plain LIKE on SQLite, which ignores case already (for ASCII letters,
            # as its lower() does) and reads three times faster without lower() on every row.
            escaped = self.file.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = (
                "\"file_name\" ILIKE ? ESCAPE '\\'"
                if dialect == "postgresql"
                else "\"file_name\" LIKE ? ESCAPE '\\'"
            )
            found.append(like)
            params.append(f"%{escaped}%")
        if self.user is not None:
            found.append('("user_id" = ? OR "user_email" = ?)')
            params += [self.user, self.user]
        return (" WHERE " + " AND ".join(found) if found else ""), params


def parse_sort(text: str) -> tuple[str, bool]:
    """A ``--sort`` value as ``(column, descending)``: ``started_at`` or ``+started_at``
    ascending, ``-started_at`` descending.

    Raises:
        HistimportError: the column is not one of :data:`SORTABLE`.
    """
    name = text.strip()
    descending = name.startswith("-")
    name = name.lstrip("+-").strip()
    if name not in SORTABLE:
        raise HistimportError(
            f"--sort {text!r}: not a column of the history; sort by one of "
            f"{', '.join(SORTABLE)} (a leading - sorts descending, e.g. -started_at)"
        )
    return name, descending


def list_imports(
    db: Database | Reader,
    filters: HistoryFilter = HistoryFilter(),
    sort: str = DEFAULT_SORT,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of the imports that match ``filters``.

    The page's ids are chosen first, by a query that reads only ``import_id`` and what the
    filter and the sort need (an index alone where one covers them), and only those rows are
    then read in full: skipping the 90,000 rows before a deep page, or sorting the 8,000 of a
    month, costs index entries instead of whole rows. Two statements rather than one with a
    subquery: the ids come back in the page's order, and the rows need no second sort.

    Args:
        db: the target database.
        filters: which imports (see :class:`HistoryFilter`).
        sort: a column of :data:`SORTABLE`, ``-`` in front for descending (default: newest
            first). Empty values sort last either way; ties go newest first.
        limit, offset: the page to return.

    Returns:
        ``imports`` (one dict per import with the columns in :data:`LIST_COLUMNS`),
        ``total_count`` (how many match, over all pages), ``limit`` and ``offset``.

    Raises:
        HistimportError: ``sort`` names no sortable column.
    """
    name, descending = parse_sort(sort)
    order = f"{quote(name)} {'DESC' if descending else 'ASC'}"
    if name not in columns.IMPORT_HISTORY_NOT_NULL:
        order += " NULLS LAST"
    if name != "import_id":
        order += ', "import_id" DESC'
    with db.raw_reader() as s:
        where, params = filters.where(s.dialect)
        table = s.table("import_history")
        # A search the trigram index serves reads all its matches for the page anyway (to
        # sort them): the same scan counts them, instead of a second one.
        counted = ", count(*) OVER ()" if filters.file and _search_by_trigrams(s) else ""
        found = s.rows(
            f'SELECT "import_id"{counted} FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?',
            [*params, limit, offset],
        )
        imports = _imports_by_id(s, table, [row[0] for row in found])
        if counted and found:
            total = found[0][1]
        else:
            ((total,),) = s.rows(f"SELECT count(*) FROM {table}{where}", params)
    return {"imports": imports, "total_count": int(total or 0), "limit": limit, "offset": offset}


#: Ids bound in one read of whole rows (a CLI page may be long; SQLite binds 32,766 at most).
_IDS_PER_READ = 500


def _imports_by_id(s: ReadSession, table: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The listing columns of imports ``ids``, in that order (an import gone since its id
    was read, on PostgreSQL where each statement sees the latest commits, is left out)."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), _IDS_PER_READ):
        chunk = ids[start : start + _IDS_PER_READ]
        marks = ", ".join("?" for _ in chunk)
        for row in s.records(
            f'SELECT {_select(LIST_COLUMNS)} FROM {table} WHERE "import_id" IN ({marks})',
            chunk,
            columns.kinds(LIST_COLUMNS),
        ):
            found[row["import_id"]] = row
    return [found[i] for i in ids if i in found]


#: The trigram index of ``import_history.file_name`` (migration 0011, PostgreSQL with pg_trgm).
FILE_NAME_TRIGRAM_INDEX = "ix_import_history_file_name_trgm"


def _search_by_trigrams(s: ReadSession) -> bool:
    """Make this read's file-name search find its matches in the trigram index; whether it
    will (PostgreSQL with the index).

    PostgreSQL prices ``ILIKE`` on a row like an integer comparison, so to it reading all the
    file-name b-tree (the count) or the primary key from the newest import until the page is
    full looks cheaper than the trigram index; over 100,000 imports the count took 3.5 times
    as long, and a page of names that match only old imports, or none, reads every row. So
    plain index scans are off for this transaction only; bitmap scans (the trigram index's
    kind) stay on. Nothing changes without the index (no pg_trgm: migration 0011), nor on
    SQLite.
    """
    if s.dialect != "postgresql":
        return False
    ((present,),) = s.rows("SELECT to_regclass(?) IS NOT NULL", [s.table(FILE_NAME_TRIGRAM_INDEX)])
    if present:
        s.rows(
            "SELECT set_config('enable_indexscan', 'off', true), "
            "set_config('enable_indexonlyscan', 'off', true)"
        )
    return bool(present)


def import_progress(db: Database | Reader, import_id: int) -> dict[str, Any]:
    """One import's status, phase and live progress (see ``tracking.progress``): a cheap
    read, meant to be polled while it runs.

    Returns:
        The columns ``import_id``, ``dataset``, ``file_name``, ``status``, ``phase``,
        ``worker``, ``heartbeat_at`` and the progress columns (``rows_done``,
        ``rows_expected``, ``progress_percent``, ``progress_updated_at``).

    Raises:
        ImportNotFoundError: no import with that id.
    """
    with db.raw_reader() as s:
        found = _one_import(s, _PROGRESS_READ, import_id)
    if found is None:
        raise ImportNotFoundError(import_id)
    return found


def get_import_detail(db: Database | Reader, import_id: int) -> dict[str, Any]:
    """Everything recorded about one import.

    Returns:
        The ``import_history`` row, plus ``audit_trail`` (its entries, oldest first: id,
        action, severity, summary, actor, details, created_at),
        ``failed_rows`` (``total`` and ``by_category`` of the failed-row records still kept),
        ``processed_file`` (the content's row in ``processed_files``, or ``None``) and
        ``reconciliation`` (match counts by decision).

    Raises:
        ImportNotFoundError: no import with that id.
    """
    with db.raw_reader() as s:
        detail = _one_import(s, columns.IMPORT_HISTORY, import_id)
        if detail is None:
            raise ImportNotFoundError(import_id)
        detail["audit_trail"] = s.records(
            f"SELECT {_select(_AUDIT_READ)} FROM {s.table('import_audit_trail')} "
            'WHERE "import_id" = ? ORDER BY "audit_id"',
            [import_id],
            columns.kinds(_AUDIT_READ),
        )
        by_category = _counts(s, "import_failed_rows", "category", import_id)
        detail["failed_rows"] = {"total": sum(by_category.values()), "by_category": by_category}
        pf = None
        if detail["file_sha256"]:
            found = s.records(
                f"SELECT {_select(columns.PROCESSED_FILES)} FROM {s.table('processed_files')} "
                'WHERE "dataset" = ? AND "sha256" = ?',
                [detail["dataset"], detail["file_sha256"]],
                columns.kinds(columns.PROCESSED_FILES),
            )
            pf = found[0] if found else None
        detail["processed_file"] = pf
        detail["reconciliation"] = _counts(
            s, "import_reconciliation_matches", "decision", import_id
        )
    return detail


#: The audit entries' columns that :func:`get_import_detail` returns.
_AUDIT_READ = ("audit_id", "action", "severity", "summary", "actor", "details", "created_at")


def _select(names: Sequence[str]) -> str:
    return ", ".join(quote(n) for n in names)


def _one_import(s: ReadSession, names: Sequence[str], import_id: int) -> dict[str, Any] | None:
    """Columns ``names`` of import ``import_id``'s ``import_history`` row, or ``None``."""
    found = s.records(
        f'SELECT {_select(names)} FROM {s.table("import_history")} WHERE "import_id" = ?',
        [import_id],
        columns.kinds(names),
    )
    return found[0] if found else None


def _counts(s: ReadSession, table: str, column: str, import_id: int) -> dict[str, int]:
    """Import ``import_id``'s rows of ``table`` counted by ``column``, in its order."""
    sql = (
        f'SELECT {quote(column)}, count(*) FROM {s.table(table)} WHERE "import_id" = ? '
        f"GROUP BY {quote(column)} ORDER BY {quote(column)}"
    )
    return {value: int(count) for value, count in s.rows(sql, [import_id])}


def stats(
    db: Database | Reader,
    days: int = 30,
    dataset: str | None = None,
    now: datetime | None = None,
    table: str | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """Figures over the imports created in the last ``days`` days, per dataset and overall.

    Args:
        db: the target database.
        days: how far back.
        dataset, table, user: only the imports of this dataset, into this target table,
            triggered by this user.
        now: the current time (tests pass their own).

    Returns:
        ``days``, ``since``, ``datasets`` (one dict per dataset, by name: ``imports``,
        ``by_status`` (status -> count), ``rows_loaded`` (created + updated by imports that
        still stand, i.e. success or partial; a rolled-back import's rows are no longer
        loaded), ``rows_failed``, ``rows_duplicate`` (repeated keys in the files),
        ``duplicate_imports`` (files whose content was imported already), ``mean_seconds``
        and ``total_seconds`` (over imports that recorded a duration; ``None`` when none
        did), ``by_user`` (``user_id`` -> imports; :data:`NO_USER` for imports recorded
        without one)) and ``totals`` (the same over every dataset, plus ``tables_affected``
        and ``tables`` (the target tables of the imports), ``distinct_users`` and ``users``
        (the users who imported)).
    """
    since = (now or utcnow()) - timedelta(days=days)
    filters = HistoryFilter(dataset=dataset, since=since, table=table, user=user)
    loaded_in = ", ".join("?" for _ in LOADED)
    out: dict[str, dict[str, Any]] = {}
    totals = _stats_entry(None)
    with db.raw_reader() as s:
        where, params = filters.where(s.dialect)
        t = s.table("import_history")
        groups = s.rows(
            'SELECT "dataset", "status", count(*), '
            f'sum(CASE WHEN "status" IN ({loaded_in}) '
            'THEN coalesce("rows_created", 0) + coalesce("rows_updated", 0) ELSE 0 END), '
            'sum(coalesce("rows_failed", 0)), sum(coalesce("rows_duplicate", 0)), '
            f'sum("total_seconds"), count("total_seconds") FROM {t}{where} '
            'GROUP BY "dataset", "status" ORDER BY "dataset", "status"',
            [*LOADED, *params],
        )
        for group in groups:
            for entry in (out.setdefault(group[0], _stats_entry(group[0])), totals):
                _add_stats(entry, group)
        tables = _distinct(s, "target_table", where, params)
        users = _distinct(s, "user_id", where, params)
        by_user = s.rows(
            f'SELECT "dataset", "user_id", count(*) FROM {t}{where} GROUP BY "dataset", '
            '"user_id" ORDER BY "dataset", count(*) DESC, "user_id"',
            params,
        )
        for name, who, count in by_user:
            for entry in (out[name], totals):
                key = who or NO_USER
                entry["by_user"][key] = entry["by_user"].get(key, 0) + int(count)
    for entry in (*out.values(), totals):
        _finish_stats(entry)
    totals.pop("dataset")
    totals |= {
        "tables_affected": len(tables),
        "tables": tables,
        "distinct_users": len(users),
        "users": users,
    }
    return {"days": days, "since": since, "datasets": list(out.values()), "totals": totals}


def _stats_entry(dataset: str | None) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "imports": 0,
        "by_status": {},
        "by_user": {},
        "rows_loaded": 0,
        "rows_failed": 0,
        "rows_duplicate": 0,
        "total_seconds": None,
        "mean_seconds": None,
        "_timed": 0,
    }


def _distinct(s: ReadSession, column: str, where: str, params: Sequence[Any]) -> list[Any]:
    """The distinct non-empty values of ``column`` among the imports ``where`` selects."""
    name = quote(column)
    not_null = f"{where} AND {name} IS NOT NULL" if where else f" WHERE {name} IS NOT NULL"
    sql = f"SELECT DISTINCT {name} FROM {s.table('import_history')}{not_null} ORDER BY {name}"
    return [value for (value,) in s.rows(sql, params)]


def _finish_stats(entry: dict[str, Any]) -> None:
    """Round the seconds, order the statuses and count the duplicate imports of ``entry``."""
    timed = entry.pop("_timed")
    if timed:
        entry["total_seconds"] = round(entry["total_seconds"], 3)
        entry["mean_seconds"] = round(entry["total_seconds"] / timed, 3)
    entry["by_status"] = dict(sorted(entry["by_status"].items()))
    entry["duplicate_imports"] = entry["by_status"].get(ImportStatus.DUPLICATE.value, 0)


def _add_stats(entry: dict[str, Any], group: Sequence[Any]) -> None:
    """Add one (dataset, status) group of the statistics query to ``entry``."""
    _dataset, status, imports, loaded, failed, duplicate, seconds, timed = group
    entry["imports"] += int(imports)
    entry["by_status"][status] = entry["by_status"].get(status, 0) + int(imports)
    entry["rows_loaded"] += int(loaded or 0)
    entry["rows_failed"] += int(failed or 0)
    entry["rows_duplicate"] += int(duplicate or 0)
    if timed:
        entry["total_seconds"] = (entry["total_seconds"] or 0.0) + float(seconds)
        entry["_timed"] += int(timed)


def jsonable(value: Any) -> Any:
    """``value`` with dates, datetimes and decimals as text, for ``--json`` output."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
