"""Retention cleanup: what is only worth keeping for a while is removed, and old imports are
archived.

* Failed-row records and error files older than the retention period (``HISTIMPORT_RETENTION_
  DAYS``, 30 days) are removed; the history row keeps its counts and error summary.
* Imports older than the archive period (``HISTIMPORT_ARCHIVE_AFTER_DAYS``, a year) are
  archived: ``import_history.archived_at`` is set and their detail rows (failed rows,
  reconciliation matches, before-images) are removed; the history row and the audit trail
  stay. An archived import can no longer be rolled back (``engine.rollback`` refuses).
* Leftover staging tables are dropped, and imports left running by a dead worker are failed.

``histimport cleanup`` and the daily Dagster ``retention_schedule`` both call :func:`cleanup`;
with ``dry_run`` it reports what it would remove and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import AuditAction, ImportStatus
from histimport_pipeline.engine.settings import DEFAULT_ARCHIVE_AFTER_DAYS, DEFAULT_RETENTION_DAYS
from histimport_pipeline.engine.tracking import audit, liveness, records

#: Imports in these states may still be using their staging table.
ACTIVE = (ImportStatus.RUNNING.value, ImportStatus.PENDING.value)
STAGING_NAME = re.compile(r"^hi_stage_(\d+)$")
#: Ids per ``IN (...)`` list: well under SQLite's and PostgreSQL's limits on bound values.
_CHUNK = 500


def _staging_tables(db: Database) -> list[int]:
    with db.reader() as conn:
        names = sa.inspect(conn).get_table_names(schema=db.schema)
    return sorted(int(m.group(1)) for n in names if (m := STAGING_NAME.match(n)))


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


@dataclass(frozen=True)
class _Plan:
    """What one cleanup removes, found in the database before anything changes."""

    cutoff: datetime
    archive_cutoff: datetime | None
    #: Imports to archive, oldest first.
    archived: list[int]
    #: Import id -> its recorded error file, for the files whose path is cleared.
    tracked_files: dict[int, str]


def _ended(db: Database) -> sa.ColumnElement[Any]:
    h = db.tables.import_history
    return sa.func.coalesce(h.c.finished_at, h.c.created_at)


def _make_plan(
    conn: sa.Connection, db: Database, cutoff: datetime, archive_cutoff: datetime | None
) -> _Plan:
    h = db.tables.import_history
    archived: list[int] = []
    if archive_cutoff is not None:
        archived = [
            int(i)
            for i in conn.execute(
                sa.select(h.c.import_id)
                .where(
                    h.c.archived_at.is_(None),
                    h.c.status.not_in(ACTIVE),
                    _ended(db) <= archive_cutoff,
                    # Rows still waiting for a review decision live in staging: not yet.
                    sa.func.coalesce(h.c.rows_review, 0) == 0,
                )
                .order_by(h.c.import_id)
            ).scalars()
        ]
    with_file = sa.select(h.c.import_id, h.c.error_file_path).where(
        h.c.error_file_path.is_not(None), h.c.status.not_in(ACTIVE)
    )
    tracked = {int(i): str(p) for i, p in conn.execute(with_file.where(_ended(db) <= cutoff))}
    for ids in _chunks(archived):
        tracked |= {
            int(i): str(p) for i, p in conn.execute(with_file.where(h.c.import_id.in_(ids)))
        }
    return _Plan(cutoff, archive_cutoff, archived, tracked)


def _old_failed_rows(db: Database, cutoff: datetime) -> sa.ColumnElement[bool]:
    h, failed = db.tables.import_history, db.tables.import_failed_rows
    active = sa.select(h.c.import_id).where(h.c.status.in_(ACTIVE))
    return sa.and_(failed.c.created_at <= cutoff, failed.c.import_id.not_in(active))


def _count_details(conn: sa.Connection, db: Database, plan: _Plan) -> dict[str, int]:
    """What :func:`_remove_details` would remove (a dry run)."""
    t = db.tables
    old = _old_failed_rows(db, plan.cutoff)
    failed = t.import_failed_rows
    count = sa.select(sa.func.count()).select_from(failed)
    counts = {
        "failed_rows_deleted": int(conn.execute(count.where(old)).scalar_one()),
        "reconciliation_matches_deleted": 0,
        "row_images_deleted": 0,
    }
    for ids in _chunks(plan.archived):
        young = sa.and_(failed.c.import_id.in_(ids), sa.not_(old))
        counts["failed_rows_deleted"] += int(conn.execute(count.where(young)).scalar_one())
        for key, table in (
            ("reconciliation_matches_deleted", t.import_reconciliation_matches),
            ("row_images_deleted", t.import_row_images),
        ):
            query = sa.select(sa.func.count()).select_from(table)
            counts[key] += int(conn.execute(query.where(table.c.import_id.in_(ids))).scalar_one())
    return counts


def _remove_details(
    conn: sa.Connection, db: Database, plan: _Plan, now: datetime, actor: str | None
) -> dict[str, int]:
    """Delete the detail rows of the plan, clear the error-file paths and mark the imports
    archived (each with an ``archived`` audit entry), in ``conn``'s transaction."""
    t = db.tables
    h, failed = t.import_history, t.import_failed_rows
    counts = {
        "failed_rows_deleted": int(
            conn.execute(sa.delete(failed).where(_old_failed_rows(db, plan.cutoff))).rowcount or 0
        ),
        "reconciliation_matches_deleted": 0,
        "row_images_deleted": 0,
    }
    for ids in _chunks(plan.archived):
        for key, table in (
            ("failed_rows_deleted", failed),
            ("reconciliation_matches_deleted", t.import_reconciliation_matches),
            ("row_images_deleted", t.import_row_images),
        ):
            deleted = conn.execute(sa.delete(table).where(table.c.import_id.in_(ids))).rowcount
            counts[key] += int(deleted or 0)
        conn.execute(sa.update(h).where(h.c.import_id.in_(ids)).values(archived_at=now))
    for ids in _chunks(sorted(plan.tracked_files)):
        conn.execute(sa.update(h).where(h.c.import_id.in_(ids)).values(error_file_path=None))
    if plan.archived:
        details = {"ended_before": plan.archive_cutoff.isoformat()} if plan.archive_cutoff else {}
        action = AuditAction.ARCHIVED
        conn.execute(
            sa.insert(t.import_audit_trail),
            [
                {
                    "import_id": i,
                    "action": action.value,
                    "actor": actor,
                    "details": details or None,
                    "severity": audit.severity_of(action, details).value,
                    "summary": audit.summary_of(action, actor, details),
                    "created_at": now,
                }
                for i in plan.archived
            ],
        )
    return counts


def _untracked_old_files(db: Database, folder: Path | None, cutoff: datetime) -> list[Path]:
    """Files in the error folder last changed at or before ``cutoff`` that no import names as
    its error file (exports by ``histimport errors``, files of imports from before migration
    0006, ``.part`` leftovers of an interrupted export)."""
    if folder is None or not folder.is_dir():
        return []
    h = db.tables.import_history
    with db.reader() as conn:
        named = set(
            conn.execute(
                sa.select(h.c.error_file_path).where(h.c.error_file_path.is_not(None))
            ).scalars()
        )
    limit = cutoff.timestamp()
    return [
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.is_symlink()
        and str(path) not in named
        and path.stat().st_mtime <= limit
    ]


def _dead_imports(db: Database, stale_after: timedelta, dry_run: bool) -> list[int]:
    if dry_run:
        return liveness.dead_imports(db, stale_after=stale_after)
    return liveness.fail_dead_imports(db, stale_after=stale_after, found_by="histimport cleanup")


def _error_files(db: Database, error_dir: Path | None, plan: _Plan) -> list[Path]:
    """The files to delete: the recorded error files of the plan, and the old untracked ones."""
    untracked = _untracked_old_files(db, error_dir, plan.cutoff)
    return sorted({Path(p) for p in plan.tracked_files.values()} | set(untracked))


def cleanup(
    db: Database,
    older_than_days: int = DEFAULT_RETENTION_DAYS,
    now: datetime | None = None,
    *,
    error_dir: Path | None = None,
    actor: str | None = None,
    stale_after: timedelta = liveness.STALE_AFTER,
    archive_after_days: int | None = DEFAULT_ARCHIVE_AFTER_DAYS,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Apply the retention periods: remove what is only worth keeping for a while.

    Long because: a dry run must count exactly what a real run removes, so both go through
    the same plan here, kind by kind.

    In order: imports left ``running`` by a dead worker are marked failed, whatever their age
    (``tracking.fail_dead_imports``). Of the imports that are not running, those that ended
    at or before the archive cut-off with no rows waiting for review are archived
    (``archived_at`` set, an ``archived`` audit entry; their failed rows, reconciliation
    matches and before-images removed: no rollback any more). Failed-row records written at
    or before the retention cut-off go, and so do the error files of imports that ended by
    then or are archived now (file deleted, ``error_file_path`` cleared) and other files in
    ``error_dir`` last changed by then. Staging tables of imports that ended by then with no
    rows in review, or that no history row knows, are dropped. History rows are kept; one
    audit entry (``import_id`` NULL) records the counts. The database changes commit in one
    transaction and files are deleted after it (one that resists is found again next time).

    Args:
        db: the target database.
        older_than_days: retention of failed rows and error files (``HISTIMPORT_RETENTION_
            DAYS``); 0 removes everything eligible now.
        now: the current time (tests pass their own).
        error_dir: the error folder (``HISTIMPORT_ERROR_DIR``), or ``None``.
        actor: who asked, for the audit entries.
        stale_after: how old a heartbeat may be before its import counts as dead.
        archive_after_days: the archive period (``HISTIMPORT_ARCHIVE_AFTER_DAYS``); ``None``:
            archive nothing.
        dry_run: change nothing; the counts say what would be removed.

    Returns:
        ``dead_imports_failed``, ``imports_archived``, ``failed_rows_deleted``,
        ``reconciliation_matches_deleted``, ``row_images_deleted``, ``error_files_deleted``,
        ``staging_tables_dropped`` (counts), ``error_files`` (paths), ``cutoff``,
        ``archive_cutoff`` (ISO text or ``None``) and ``dry_run``.
    """
    now = now or records.utcnow()
    cutoff = now - timedelta(days=older_than_days)
    archive_cutoff = (
        None if archive_after_days is None else now - timedelta(days=archive_after_days)
    )
    staged_before = set(_staging_tables(db))
    dead = _dead_imports(db, stale_after, dry_run)
    with db.reader() if dry_run else db.engine.begin() as conn:
        plan = _make_plan(conn, db, cutoff, archive_cutoff)
        if dry_run:
            details = _count_details(conn, db, plan)
        else:
            details = _remove_details(conn, db, plan, now, actor)
    files = _error_files(db, error_dir, plan)
    expired = _expired_staging(db, cutoff)
    if not dry_run:
        for path in files:
            path.unlink(missing_ok=True)
        for import_id in expired:
            load.drop_staging(db, import_id)
    counts: dict[str, Any] = {
        "dead_imports_failed": len(dead),
        **details,
        "error_files_deleted": len(files),
        "staging_tables_dropped": len(set(expired) | staged_before.intersection(dead)),
        "imports_archived": len(plan.archived),
    }
    facts = {
        "cutoff": cutoff.isoformat(),
        "archive_cutoff": archive_cutoff.isoformat() if archive_cutoff else None,
    }
    if not dry_run:
        periods = {"older_than_days": older_than_days, "archive_after_days": archive_after_days}
        with db.engine.begin() as conn:
            records.record_audit(
                conn, db, None, AuditAction.CLEANUP, actor, counts | periods | facts
            )
    return {**counts, **facts, "error_files": [str(p) for p in files], "dry_run": dry_run}


def _expired_staging(db: Database, cutoff: datetime) -> list[int]:
    """The staging tables to drop: of imports that ended at or before ``cutoff`` with no rows
    in review, and those no history row knows."""
    h = db.tables.import_history
    staged = _staging_tables(db)
    expired: set[int] = set()
    if staged:
        with db.reader() as conn:
            expired = set(
                conn.execute(
                    sa.select(h.c.import_id).where(
                        h.c.import_id.in_(staged),
                        h.c.status.not_in(ACTIVE),
                        sa.func.coalesce(h.c.finished_at, h.c.created_at) <= cutoff,
                        sa.func.coalesce(h.c.rows_review, 0) == 0,
                    )
                ).scalars()
            )
    # A staging table without a history row is debris of a rolled-back dry run or a crash.
    with db.reader() as conn:
        known = (
            set(conn.execute(sa.select(h.c.import_id).where(h.c.import_id.in_(staged))).scalars())
            if staged
            else set()
        )
    return [i for i in staged if i in expired or i not in known]
