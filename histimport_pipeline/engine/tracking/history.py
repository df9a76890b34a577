"""Read side of the tracking tables: history, one import in detail, failed rows, statistics
and lineage (the queries behind ``show``, ``history``, ``stats``, ``lineage`` and ``errors``).

Plain queries for the CLI (and anyone else): every function takes a :class:`Database` and
returns plain dicts. Timestamps come back as timezone-aware UTC datetimes on both backends
(SQLite hands back naive values that were stored as UTC). The retention cleanup lives in
``tracking.cleanup`` and the failed-rows CSV in ``tracking.failed_rows``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError, ImportNotFoundError
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.tracking.records import utcnow

if TYPE_CHECKING:
    # Only lineage_of_key needs specs and coercion (pydantic): not imported for the others.
    from histimport_pipeline.engine.spec import DatasetSpec

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
    "started_at",
    "finished_at",
    "error_message",
)
LOADED = (ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value)
_SINCE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _utc(value: Any) -> Any:
    """A naive datetime read back from SQLite is UTC; make it say so."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): _utc(v) for k, v in row.items()}


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
    now = now or utcnow()
    age = _SINCE.match(text)
    if age:
        return now - timedelta(**{_UNITS[age.group(2).lower()]: int(age.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HistimportError(
            f"--since {text!r} is neither a date (2024-01-31) nor an age (7d, 12h, 30m, 2w)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def list_imports(
    db: Database,
    dataset: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """List imports, newest first.

    Args:
        db: the target database.
        dataset: only this dataset.
        status: only this status (see :class:`ImportStatus`).
        since: only imports created at or after this instant.
        limit, offset: the page to return.

    Returns:
        One dict per import with the columns in :data:`LIST_COLUMNS`.
    """
    t = db.tables.import_history
    query = sa.select(*(t.c[name] for name in LIST_COLUMNS))
    if dataset is not None:
        query = query.where(t.c.dataset == dataset)
    if status is not None:
        query = query.where(t.c.status == status)
    if since is not None:
        query = query.where(t.c.created_at >= since.astimezone(UTC))
    query = query.order_by(t.c.import_id.desc()).limit(limit).offset(offset)
    with db.reader() as conn:
        return [_plain(r) for r in conn.execute(query).mappings()]


def get_import_detail(db: Database, import_id: int) -> dict[str, Any]:
    """Everything recorded about one import.

    Returns:
        The ``import_history`` row, plus ``audit_trail`` (its entries, oldest first),
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
        detail = _plain(row)
        detail["audit_trail"] = [
            _plain(r)
            for r in conn.execute(
                sa.select(
                    audit.c.audit_id,
                    audit.c.action,
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
        detail["processed_file"] = _plain(pf) if pf else None
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
    db: Database, days: int = 30, dataset: str | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Per-dataset figures over the last ``days`` days (by when the import was created).

    Returns:
        One dict per dataset, by name: ``imports`` (total), ``by_status`` (status -> count),
        ``rows_loaded`` (created + updated by imports that still stand, i.e. success or
        partial; a rolled-back import's rows are no longer loaded), ``rows_failed`` (over all
        imports), ``mean_seconds`` and ``total_seconds`` (over imports that recorded a
        duration; ``None`` when none did).
    """
    t = db.tables.import_history
    since = (now or utcnow()) - timedelta(days=days)
    loaded = sa.func.coalesce(t.c.rows_created, 0) + sa.func.coalesce(t.c.rows_updated, 0)
    query = (
        sa.select(
            t.c.dataset,
            t.c.status,
            sa.func.count().label("imports"),
            sa.func.sum(sa.case((t.c.status.in_(LOADED), loaded), else_=0)).label("loaded"),
            sa.func.sum(sa.func.coalesce(t.c.rows_failed, 0)).label("failed"),
            sa.func.sum(t.c.total_seconds).label("seconds"),
            sa.func.count(t.c.total_seconds).label("timed"),
        )
        .where(t.c.created_at >= since)
        .group_by(t.c.dataset, t.c.status)
        .order_by(t.c.dataset, t.c.status)
    )
    if dataset is not None:
        query = query.where(t.c.dataset == dataset)
    out: dict[str, dict[str, Any]] = {}
    with db.reader() as conn:
        for r in conn.execute(query):
            entry = out.setdefault(
                r.dataset,
                {
                    "dataset": r.dataset,
                    "imports": 0,
                    "by_status": {},
                    "rows_loaded": 0,
                    "rows_failed": 0,
                    "total_seconds": None,
                    "mean_seconds": None,
                    "_timed": 0,
                },
            )
            entry["imports"] += int(r.imports)
            entry["by_status"][r.status] = int(r.imports)
            entry["rows_loaded"] += int(r.loaded or 0)
            entry["rows_failed"] += int(r.failed or 0)
            if r.timed:
                entry["total_seconds"] = (entry["total_seconds"] or 0.0) + float(r.seconds)
                entry["_timed"] += int(r.timed)
    for entry in out.values():
        timed = entry.pop("_timed")
        if timed:
            entry["total_seconds"] = round(entry["total_seconds"], 3)
            entry["mean_seconds"] = round(entry["total_seconds"] / timed, 3)
    return list(out.values())


def _target(db: Database, table: str) -> sa.Table:
    """The reflected target table; it must exist and carry ``_import_id``."""
    with db.reader() as conn:
        if not sa.inspect(conn).has_table(table):
            raise HistimportError(f"no table {table!r} in {db.masked_url}")
        reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)
    if "_import_id" not in reflected.c:
        raise HistimportError(
            f"table {table!r} has no _import_id column, so histimport did not load it"
        )
    return reflected


def lineage(db: Database, table: str) -> list[dict[str, Any]]:
    """The imports that contributed rows still present in ``table``.

    Returns:
        One dict per import, oldest first: ``import_id``, ``rows`` (how many of its rows are
        in the table now), and from ``import_history`` ``dataset``, ``file_name``,
        ``started_at``, ``status`` (``None`` when the history row is gone).

    Raises:
        HistimportError: the table does not exist or was not loaded by histimport.
    """
    target = _target(db, table)
    h = db.tables.import_history
    counts = (
        sa.select(target.c._import_id.label("import_id"), sa.func.count().label("rows"))
        .group_by(target.c._import_id)
        .subquery("contributed")
    )
    query = (
        sa.select(
            counts.c.import_id,
            counts.c.rows,
            h.c.dataset,
            h.c.file_name,
            h.c.started_at,
            h.c.status,
        )
        .select_from(counts.outerjoin(h, h.c.import_id == counts.c.import_id))
        .order_by(counts.c.import_id)
    )
    with db.reader() as conn:
        return [_plain(r) for r in conn.execute(query).mappings()]


def lineage_of_key(
    db: Database, spec: DatasetSpec, key_values: Mapping[str, str]
) -> dict[str, Any] | None:
    """Which import wrote the row with this natural key, from which file and source row.

    The key's text is converted by the spec column's type (the same coercion the import
    applies), so ``--key 007`` finds a string key ``007`` and ``--key 42`` an integer key 42.

    Args:
        db: the target database.
        spec: the dataset whose ``target_table`` holds the row; its ``key`` names the columns.
        key_values: key column -> value as text; exactly the spec's key columns.

    Returns:
        ``None`` when no row has that key, else ``table``, ``key``, ``import_id``,
        ``source_row``, ``loaded_at``, ``row`` (the row's data columns) and ``import`` (the
        import's ``dataset``, ``file_name``, ``file_path``, ``file_sha256``, ``status``,
        ``started_at``, ``triggered_by``; ``None`` when the history row is gone).

    Raises:
        HistimportError: the dataset has no key, the key columns given are not the spec's, a
            value does not fit its column's type, or the table does not exist.
    """
    if not spec.key:
        raise HistimportError(
            f"dataset {spec.name} has no key, so a row cannot be named by key; "
            f"use `histimport lineage {spec.target_table}` for per-import counts"
        )
    if set(key_values) != set(spec.key):
        raise HistimportError(
            f"table {spec.target_table} is keyed by {', '.join(spec.key)}; "
            f"got {', '.join(key_values) or 'no key'}"
        )
    from histimport_pipeline.engine.validation import CoercionError, coerce_value

    bound: dict[str, Any] = {}
    for name in spec.key:
        column = spec.columns[name]
        try:
            bound[name] = coerce_value(name, column, key_values[name])
        except CoercionError as exc:
            raise HistimportError(f"key value does not fit its column: {exc.message}") from None
    target = _target(db, spec.target_table)
    h = db.tables.import_history
    query = sa.select(target).where(*(target.c[name] == value for name, value in bound.items()))
    with db.reader() as conn:
        row = conn.execute(query).mappings().first()
        if row is None:
            return None
        info = (
            conn.execute(
                sa.select(
                    h.c.dataset,
                    h.c.file_name,
                    h.c.file_path,
                    h.c.file_sha256,
                    h.c.status,
                    h.c.started_at,
                    h.c.triggered_by,
                ).where(h.c.import_id == row["_import_id"])
            )
            .mappings()
            .first()
        )
    return {
        "table": spec.target_table,
        "key": dict(key_values),
        "import_id": row["_import_id"],
        "source_row": row["_source_row"],
        "loaded_at": _utc(row.get("_loaded_at")),
        "row": {k: v for k, v in row.items() if not k.startswith("_")},
        "import": _plain(info) if info else None,
    }


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


def failed_partitions(
    db: Database, dataset: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Partitions whose latest import failed or was rejected, oldest first.

    Returns:
        One dict per partition: dataset, partition_key, import_id, status, file_path.
    """
    h = db.tables.import_history
    latest = (
        sa.select(h.c.dataset, h.c.partition_key, sa.func.max(h.c.import_id).label("last_id"))
        .where(h.c.partition_key.is_not(None))
        .group_by(h.c.dataset, h.c.partition_key)
        .subquery()
    )
    query = (
        sa.select(h.c.dataset, h.c.partition_key, h.c.import_id, h.c.status, h.c.file_path)
        .join(latest, h.c.import_id == latest.c.last_id)
        .where(h.c.status.in_([ImportStatus.FAILED.value, ImportStatus.REJECTED.value]))
        .order_by(h.c.import_id)
    )
    if dataset:
        query = query.where(h.c.dataset == dataset)
    if since is not None:
        query = query.where(h.c.created_at >= since)
    with db.reader() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
