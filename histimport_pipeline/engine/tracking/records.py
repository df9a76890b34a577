"""Tracking rows: the import's life in ``import_history``, the file in ``processed_files``,
the process in ``processing_status``, failed rows and the audit trail.

Functions here take an open connection so that the caller decides what commits together:
the final tracking rows of an import commit in the same transaction as its data.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import (
    AuditAction,
    AuditSeverity,
    FileStatus,
    ImportStatus,
    RawRow,
    RowError,
    utcnow,
)
from histimport_pipeline.engine.tracking.audit import severity_of, summary_of

#: Failed-row messages kept in the error summary.
TOP_ERRORS = 5


def worker_id() -> str:
    """``host:pid`` of this process, recorded on the imports it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def record_audit(
    conn: sa.Connection,
    db: Database,
    import_id: int | None,
    action: AuditAction,
    actor: str | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    severity: AuditSeverity | None = None,
    summary: str | None = None,
) -> None:
    """Append one entry to ``import_audit_trail``.

    Args:
        import_id: the import it is about (``None``: an entry of no import, e.g. cleanup).
        action: what happened.
        actor: who did it; ``None``: the import's user (``import_history.user_id``), so
            every step of an import carries who imported it.
        details: the facts, JSON-ready.
        severity, summary: default to what ``tracking.audit`` makes of the action and
            details (see ``severity_of`` and ``summary_of``).
    """
    facts = dict(details) if details else {}
    who: Any = actor
    if actor is None and import_id is not None:
        h = db.tables.import_history
        who = sa.select(h.c.user_id).where(h.c.import_id == import_id).scalar_subquery()
    conn.execute(
        sa.insert(db.tables.import_audit_trail).values(
            import_id=import_id,
            action=action.value,
            actor=who,
            details=facts or None,
            severity=(severity or severity_of(action, facts)).value,
            summary=summary or summary_of(action, actor, facts),
            created_at=utcnow(),
        )
    )


def record_event(
    db: Database, action: AuditAction, actor: str | None, details: Mapping[str, Any]
) -> None:
    """Append an audit entry of no import (an upload, a refused request) in its own
    transaction."""
    with db.engine.begin() as conn:
        record_audit(conn, db, None, action, actor, details)


def create_import(conn: sa.Connection, db: Database, **values: Any) -> int:
    """Insert an ``import_history`` row and return its id."""
    t = db.tables.import_history
    stamp = utcnow()
    values.setdefault("created_at", stamp)
    values.setdefault("updated_at", stamp)
    result = conn.execute(sa.insert(t).values(**values).returning(t.c.import_id))
    return int(result.scalar_one())


def update_import(conn: sa.Connection, db: Database, import_id: int, **values: Any) -> None:
    """Update fields of one ``import_history`` row (``updated_at`` is set too)."""
    t = db.tables.import_history
    conn.execute(
        sa.update(t).where(t.c.import_id == import_id).values(updated_at=utcnow(), **values)
    )


def record_nothing_loaded(conn: sa.Connection, db: Database, import_id: int) -> None:
    """Record the counts of an import that wrote nothing to the target (refused, duplicate,
    failed): rows created, updated, unchanged and deleted are 0, and the counts of rows
    failed, duplicate, in review and processed stay as recorded or are 0 when never reached.
    """
    t = db.tables.import_history
    kept = (t.c.rows_processed, t.c.rows_failed, t.c.rows_duplicate, t.c.rows_review)
    update_import(
        conn,
        db,
        import_id,
        rows_created=0,
        rows_updated=0,
        rows_unchanged=0,
        rows_deleted=0,
        **{c.name: sa.func.coalesce(c, 0) for c in kept},
    )


def record_file_moved(db: Database, import_id: int, moved_to: Path, reason: str) -> None:
    """Record that an import's file now lives at ``moved_to`` (archived or quarantined).

    ``import_history.file_path`` follows the file, so ``show`` and ``lineage --key`` name
    where it is now; the audit trail keeps where it was (``from``) and why it moved.

    Args:
        db: the target database.
        import_id: the import whose file moved.
        moved_to: the file's new path.
        reason: what the move was, e.g. ``archived`` or ``quarantined``.
    """
    t = db.tables.import_history
    with db.engine.begin() as conn:
        before = conn.execute(
            sa.select(t.c.file_path).where(t.c.import_id == import_id)
        ).scalar_one_or_none()
        path = str(moved_to.resolve())
        update_import(conn, db, import_id, file_path=path)
        record_audit(
            conn,
            db,
            import_id,
            AuditAction.MOVED,
            None,
            {"reason": reason, "from": before, "to": path},
        )


def get_import(conn: sa.Connection, db: Database, import_id: int) -> dict[str, Any] | None:
    """One ``import_history`` row as a dict, or ``None``."""
    t = db.tables.import_history
    row = conn.execute(sa.select(t).where(t.c.import_id == import_id)).mappings().first()
    return dict(row) if row else None


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a file's content for an import."""

    claimed: bool
    #: When not claimed: the import that already holds or loaded this content.
    holder_import_id: int | None = None
    holder_status: str | None = None


_DONE = (FileStatus.IMPORTED.value, FileStatus.PARTIAL.value, FileStatus.PROCESSING.value)


def claim_file(
    conn: sa.Connection,
    db: Database,
    *,
    dataset: str,
    sha256: str,
    file_name: str,
    file_size: int,
    import_id: int,
    force: bool,
) -> Claim:
    """Claim ``(dataset, sha256)`` for ``import_id`` in ``processed_files``.

    The unique constraint on ``(dataset, sha256)`` is the lock: of two processes claiming the
    same content at once, the database lets exactly one insert. Content that was imported
    (fully or partly) or is being imported is not claimed again unless ``force``; content
    whose earlier import failed, was rejected or rolled back is claimed again.

    Returns:
        Whether this import holds the content now, else who does.
    """
    t = db.tables.processed_files
    stamp = utcnow()
    row = conn.execute(
        sa.select(t.c.status, t.c.last_import_id)
        .where(t.c.dataset == dataset, t.c.sha256 == sha256)
        .with_for_update()
    ).first()
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(t).values(
                        dataset=dataset,
                        sha256=sha256,
                        file_name=file_name,
                        file_size=file_size,
                        status=FileStatus.PROCESSING.value,
                        first_import_id=import_id,
                        last_import_id=import_id,
                        first_seen_at=stamp,
                        last_seen_at=stamp,
                        updated_at=stamp,
                    )
                )
            return Claim(claimed=True)
        except sa.exc.IntegrityError:
            row = conn.execute(
                sa.select(t.c.status, t.c.last_import_id).where(
                    t.c.dataset == dataset, t.c.sha256 == sha256
                )
            ).one()
    seen = {"times_seen": t.c.times_seen + 1, "last_seen_at": stamp, "updated_at": stamp}
    where = sa.and_(t.c.dataset == dataset, t.c.sha256 == sha256)
    if row.status in _DONE and not force:
        conn.execute(sa.update(t).where(where).values(**seen))
        return Claim(claimed=False, holder_import_id=row.last_import_id, holder_status=row.status)
    conn.execute(
        sa.update(t)
        .where(where)
        .values(
            status=FileStatus.PROCESSING.value,
            last_import_id=import_id,
            file_name=file_name,
            **seen,
        )
    )
    return Claim(claimed=True)


def set_file_status(
    conn: sa.Connection, db: Database, dataset: str, sha256: str, import_id: int, status: FileStatus
) -> None:
    """Set the ``processed_files`` status of content last claimed by ``import_id``.

    When the import ended (any status but ``rolled_back``), the content's row also takes the
    import's file type and records in the file, and today (UTC) as its ``process_date``.
    """
    t, h = db.tables.processed_files, db.tables.import_history
    stamp = utcnow()
    values: dict[str, Any] = {"status": status.value, "updated_at": stamp}
    if status is not FileStatus.ROLLED_BACK:

        def of_import(column: sa.Column[Any]) -> Any:
            return sa.select(column).where(h.c.import_id == import_id).scalar_subquery()

        values |= {
            "file_type": of_import(h.c.file_type),
            "records_count": of_import(h.c.rows_in_file),
            "process_date": stamp.date(),
        }
    conn.execute(
        sa.update(t)
        .where(t.c.dataset == dataset, t.c.sha256 == sha256, t.c.last_import_id == import_id)
        .values(**values)
    )


def touch_process(
    conn: sa.Connection,
    db: Database,
    process_name: str,
    *,
    process_type: str,
    dataset: str | None = None,
    **values: Any,
) -> None:
    """Upsert one ``processing_status`` row with ``values`` (portable read-then-write)."""
    t = db.tables.processing_status
    values["updated_at"] = utcnow()
    exists = conn.execute(
        sa.select(t.c.process_name).where(t.c.process_name == process_name).with_for_update()
    ).first()
    if exists:
        conn.execute(sa.update(t).where(t.c.process_name == process_name).values(**values))
    else:
        conn.execute(
            sa.insert(t).values(
                process_name=process_name, process_type=process_type, dataset=dataset, **values
            )
        )


def record_outcome(
    conn: sa.Connection,
    db: Database,
    *,
    dataset: str,
    import_id: int,
    ok: bool,
    error: str | None = None,
    business_date: Any = None,
) -> None:
    """Update the dataset's ``processing_status`` row after an import ended."""
    t = db.tables.processing_status
    name = f"dataset:{dataset}"
    stamp = utcnow()
    current = conn.execute(
        sa.select(t.c.consecutive_errors).where(t.c.process_name == name)
    ).scalar()
    values: dict[str, Any] = {
        "state": "idle" if ok else "error",
        "last_run_at": stamp,
        "last_run_date": business_date or stamp.date(),
        "last_import_id": import_id,
    }
    if ok:
        values |= {
            "last_success_at": stamp,
            "last_success_date": business_date or stamp.date(),
            "consecutive_errors": 0,
            "last_error": None,
        }
    else:
        values |= {"consecutive_errors": (current or 0) + 1, "last_error": error}
    touch_process(conn, db, name, process_type="dataset", dataset=dataset, **values)


def write_failed_rows(
    conn: sa.Connection,
    db: Database,
    import_id: int,
    headers: Sequence[str],
    failures: Iterable[tuple[RawRow, RowError]],
) -> int:
    """Store failed rows with their original values keyed by original header.

    Every value of the record is kept: those past the header (a ragged row with too many
    fields) under ``_extra_1``, ``_extra_2``... A NUL character, which neither PostgreSQL
    text nor JSONB can hold, is stored as U+2400 (the visible symbol for NUL).

    Returns:
        How many rows were written.
    """
    records = [
        {
            "import_id": import_id,
            "source_row": err.source_row,
            "column_name": err.column,
            "category": err.category.value,
            "message": _storable(err.message),
            "raw_value": _storable(err.raw_value),
            "raw_values": original_values(headers, raw.raw),
        }
        for raw, err in failures
    ]
    if records:
        conn.execute(sa.insert(db.tables.import_failed_rows), records)
    return len(records)


#: Key prefix of a ragged row's values past the header in ``import_failed_rows.raw_values``.
EXTRA_VALUE_PREFIX = "_extra_"


def original_values(headers: Sequence[str], cells: Sequence[str | None]) -> dict[str, str | None]:
    """A record's cells keyed by header; cells past the header as ``_extra_1``, ``_extra_2``...

    A header that happens to be named like an extra key keeps its value; the extra then takes
    the next free number, so no value is ever overwritten.
    """
    values = {h: _storable(c) for h, c in zip(headers, cells, strict=False)}
    number = 0
    for cell in cells[len(headers) :]:
        number += 1
        while f"{EXTRA_VALUE_PREFIX}{number}" in values:
            number += 1
        values[f"{EXTRA_VALUE_PREFIX}{number}"] = _storable(cell)
    return values


def _storable(text: str | None) -> str | None:
    return text.replace("\x00", "\u2400") if text and "\x00" in text else text


def error_summary(conn: sa.Connection, db: Database, import_id: int) -> dict[str, Any]:
    """Counts of failed rows per category and the most frequent messages."""
    t = db.tables.import_failed_rows
    by_category = {
        category: count
        for category, count in conn.execute(
            sa.select(t.c.category, sa.func.count())
            .where(t.c.import_id == import_id)
            .group_by(t.c.category)
            .order_by(t.c.category)
        )
    }
    # A column's messages name the row's value: grouped by column and category they make a
    # readable top list. A whole-record problem (no column, e.g. "row has 6 fields, header
    # has 3") is grouped by its exact message, so different problems never share an example.
    whole_record = sa.case((t.c.column_name.is_(None), t.c.message), else_=None)
    top = [
        {"column": column, "category": category, "count": count, "example": example}
        for column, category, _, count, example in conn.execute(
            sa.select(
                t.c.column_name,
                t.c.category,
                whole_record,
                sa.func.count(),
                sa.func.min(t.c.message),
            )
            .where(t.c.import_id == import_id)
            .group_by(t.c.column_name, t.c.category, whole_record)
            .order_by(sa.func.count().desc(), t.c.column_name, sa.func.min(t.c.message))
            .limit(TOP_ERRORS)
        )
    ]
    return {"by_category": by_category, "top_errors": top}


def dates_needing_import(
    conn: sa.Connection, db: Database, dataset: str, dates: Sequence[Any]
) -> list[Any]:
    """Of ``dates``, those with no successful (or partial) daily or backfill import.

    A date is missing when it has no import at all, or only failed/rejected ones.
    """
    if not dates:
        return []
    t = db.tables.import_history
    done = set(
        conn.execute(
            sa.select(t.c.business_date)
            .distinct()
            .where(
                t.c.dataset == dataset,
                t.c.business_date.in_(list(dates)),
                t.c.import_type.in_(["DAILY", "BACKFILL", "RETRY"]),
                t.c.status.in_(
                    [
                        ImportStatus.SUCCESS.value,
                        ImportStatus.PARTIAL.value,
                        ImportStatus.DUPLICATE.value,
                        ImportStatus.RUNNING.value,
                    ]
                ),
            )
        ).scalars()
    )
    return [d for d in dates if d not in done]


def expired_partition_keys(
    conn: sa.Connection, db: Database, dataset: str, keys: Sequence[str], older_than: datetime
) -> list[str]:
    """Of ``keys``, file partitions whose last import ended before ``older_than``."""
    if not keys:
        return []
    t = db.tables.import_history
    last = sa.func.max(sa.func.coalesce(t.c.finished_at, t.c.created_at))
    rows = conn.execute(
        sa.select(
            t.c.partition_key,
            last,
            sa.func.sum(sa.case((t.c.status.in_(["running", "pending"]), 1), else_=0)),
        )
        .where(t.c.dataset == dataset, t.c.partition_key.in_(list(keys)))
        .group_by(t.c.partition_key)
    ).all()
    expired = []
    for key, ended, active in rows:
        if active:
            continue
        if ended is not None and ended.tzinfo is None:
            ended = ended.replace(tzinfo=UTC)
        if ended is not None and ended < older_than:
            expired.append(key)
    return expired
