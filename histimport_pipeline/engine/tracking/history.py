"""Read side of the tracking tables: history, one import in detail and statistics (the
queries behind ``show``, ``history`` and ``stats``).

Plain queries for the CLI (and anyone else): every function takes a :class:`Database` and
returns plain dicts. Timestamps come back as timezone-aware UTC datetimes on both backends
(SQLite hands back naive values that were stored as UTC). Lineage lives in
``tracking.lineage``, the retention cleanup in ``tracking.cleanup`` and the failed-rows CSV in
``tracking.failed_rows``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError, ImportNotFoundError
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.tracking.records import utcnow

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

    def conditions(self, t: sa.Table) -> list[sa.ColumnElement[bool]]:
        """The filter as conditions on ``import_history`` (values bound, never inlined)."""
        found: list[sa.ColumnElement[bool]] = []
        if self.dataset is not None:
            found.append(t.c.dataset == self.dataset)
        if self.status is not None:
            found.append(t.c.status == self.status)
        if self.since is not None:
            found.append(t.c.created_at >= self.since.astimezone(UTC))
        if self.until is not None:
            found.append(t.c.created_at < self.until.astimezone(UTC))
        if self.file:
            # LIKE's own wildcards in the text are matched as themselves.
            escaped = self.file.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            found.append(t.c.file_name.ilike(f"%{escaped}%", escape="\\"))
        if self.table is not None:
            found.append(t.c.target_table == self.table)
        if self.user is not None:
            found.append(sa.or_(t.c.user_id == self.user, t.c.user_email == self.user))
        if self.source is not None:
            found.append(t.c.source == self.source)
        return found


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
    db: Database,
    filters: HistoryFilter = HistoryFilter(),
    sort: str = DEFAULT_SORT,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of the imports that match ``filters``.

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
    t = db.tables.import_history
    where = filters.conditions(t)
    ordered = t.c[name].desc() if descending else t.c[name].asc()
    order = [ordered.nulls_last()]
    if name != "import_id":
        order.append(t.c.import_id.desc())
    query = (
        sa.select(*(t.c[c] for c in LIST_COLUMNS))
        .where(*where)
        .order_by(*order)
        .limit(limit)
        .offset(offset)
    )
    with db.reader() as conn:
        imports = [plain_row(r) for r in conn.execute(query).mappings()]
        total = conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar()
    return {"imports": imports, "total_count": int(total or 0), "limit": limit, "offset": offset}


def import_progress(db: Database, import_id: int) -> dict[str, Any]:
    """One import's status, phase and live progress (see ``tracking.progress``): a cheap
    read, meant to be polled while it runs.

    Returns:
        The columns ``import_id``, ``dataset``, ``file_name``, ``status``, ``phase``,
        ``worker``, ``heartbeat_at`` and the progress columns (``rows_done``,
        ``rows_expected``, ``progress_percent``, ``progress_updated_at``).

    Raises:
        ImportNotFoundError: no import with that id.
    """
    t = db.tables.import_history
    query = sa.select(*(t.c[name] for name in _PROGRESS_READ)).where(t.c.import_id == import_id)
    with db.reader() as conn:
        row = conn.execute(query).mappings().first()
    if row is None:
        raise ImportNotFoundError(import_id)
    return plain_row(row)


def get_import_detail(db: Database, import_id: int) -> dict[str, Any]:
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
    tables = db.tables
    h, audit, failed = tables.import_history, tables.import_audit_trail, tables.import_failed_rows
    files, matches = tables.processed_files, tables.import_reconciliation_matches
    with db.reader() as conn:
        row = conn.execute(sa.select(h).where(h.c.import_id == import_id)).mappings().first()
        if row is None:
            raise ImportNotFoundError(import_id)
        detail = plain_row(row)
        detail["audit_trail"] = [
            plain_row(r)
            for r in conn.execute(
                sa.select(
                    audit.c.audit_id,
                    audit.c.action,
                    audit.c.severity,
                    audit.c.summary,
                    audit.c.actor,
                    audit.c.details,
                    audit.c.created_at,
                )
                .where(audit.c.import_id == import_id)
                .order_by(audit.c.audit_id)
            ).mappings()
        ]
        by_category = {
            category: int(count)
            for category, count in conn.execute(
                sa.select(failed.c.category, sa.func.count())
                .where(failed.c.import_id == import_id)
                .group_by(failed.c.category)
                .order_by(failed.c.category)
            )
        }
        detail["failed_rows"] = {"total": sum(by_category.values()), "by_category": by_category}
        pf = None
        if row["file_sha256"]:
            pf = (
                conn.execute(
                    sa.select(files).where(
                        files.c.dataset == row["dataset"], files.c.sha256 == row["file_sha256"]
                    )
                )
                .mappings()
                .first()
            )
        detail["processed_file"] = plain_row(pf) if pf else None
        detail["reconciliation"] = {
            decision: int(count)
            for decision, count in conn.execute(
                sa.select(matches.c.decision, sa.func.count())
                .where(matches.c.import_id == import_id)
                .group_by(matches.c.decision)
                .order_by(matches.c.decision)
            )
        }
    return detail


def stats(
    db: Database,
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
    t = db.tables.import_history
    since = (now or utcnow()) - timedelta(days=days)
    where = HistoryFilter(dataset=dataset, since=since, table=table, user=user).conditions(t)
    loaded = sa.func.coalesce(t.c.rows_created, 0) + sa.func.coalesce(t.c.rows_updated, 0)
    query = (
        sa.select(
            t.c.dataset,
            t.c.status,
            sa.func.count().label("imports"),
            sa.func.sum(sa.case((t.c.status.in_(LOADED), loaded), else_=0)).label("loaded"),
            sa.func.sum(sa.func.coalesce(t.c.rows_failed, 0)).label("failed"),
            sa.func.sum(sa.func.coalesce(t.c.rows_duplicate, 0)).label("duplicate"),
            sa.func.sum(t.c.total_seconds).label("seconds"),
            sa.func.count(t.c.total_seconds).label("timed"),
        )
        .where(*where)
        .group_by(t.c.dataset, t.c.status)
        .order_by(t.c.dataset, t.c.status)
    )
    out: dict[str, dict[str, Any]] = {}
    totals = _stats_entry(None)
    with db.reader() as conn:
        for r in conn.execute(query):
            for entry in (out.setdefault(r.dataset, _stats_entry(r.dataset)), totals):
                _add_stats(entry, r)
        tables, users = (
            _distinct(conn, t.c.target_table, where),
            _distinct(conn, t.c.user_id, where),
        )
        by_user = (
            sa.select(t.c.dataset, t.c.user_id, sa.func.count())
            .where(*where)
            .group_by(t.c.dataset, t.c.user_id)
            .order_by(t.c.dataset, sa.func.count().desc(), t.c.user_id)
        )
        for name, who, count in conn.execute(by_user):
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


def _distinct(
    conn: sa.Connection, column: sa.Column[Any], where: Sequence[sa.ColumnElement[bool]]
) -> list[Any]:
    """The distinct non-empty values of ``column`` among the imports ``where`` selects."""
    query = sa.select(column).where(*where, column.is_not(None)).distinct().order_by(column)
    return list(conn.execute(query).scalars())


def _finish_stats(entry: dict[str, Any]) -> None:
    """Round the seconds, order the statuses and count the duplicate imports of ``entry``."""
    timed = entry.pop("_timed")
    if timed:
        entry["total_seconds"] = round(entry["total_seconds"], 3)
        entry["mean_seconds"] = round(entry["total_seconds"] / timed, 3)
    entry["by_status"] = dict(sorted(entry["by_status"].items()))
    entry["duplicate_imports"] = entry["by_status"].get(ImportStatus.DUPLICATE.value, 0)


def _add_stats(entry: dict[str, Any], r: sa.Row[Any]) -> None:
    """Add one (dataset, status) group of the statistics query to ``entry``."""
    entry["imports"] += int(r.imports)
    entry["by_status"][r.status] = entry["by_status"].get(r.status, 0) + int(r.imports)
    entry["rows_loaded"] += int(r.loaded or 0)
    entry["rows_failed"] += int(r.failed or 0)
    entry["rows_duplicate"] += int(r.duplicate or 0)
    if r.timed:
        entry["total_seconds"] = (entry["total_seconds"] or 0.0) + float(r.seconds)
        entry["_timed"] += int(r.timed)


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
