"""Retention cleanup: failed-row records, exported error files and leftover staging tables
older than the retention period are removed; imports of dead workers are failed first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import AuditAction, ImportStatus
from histimport_pipeline.engine.tracking import liveness, records

#: Imports in these states may still be using their staging table.
ACTIVE = (ImportStatus.RUNNING.value, ImportStatus.PENDING.value)
STAGING_NAME = re.compile(r"^hi_stage_(\d+)$")


def _staging_tables(db: Database) -> list[int]:
    with db.reader() as conn:
        names = sa.inspect(conn).get_table_names(schema=db.schema)
    return sorted(int(m.group(1)) for n in names if (m := STAGING_NAME.match(n)))


def _old_files(folder: Path | None, cutoff: datetime) -> Iterator[Path]:
    if folder is None or not folder.is_dir():
        return
    limit = cutoff.timestamp()
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink() and path.stat().st_mtime <= limit:
            yield path


def cleanup(
    db: Database,
    older_than_days: int = 30,
    now: datetime | None = None,
    *,
    error_dir: Path | None = None,
    actor: str | None = None,
    stale_after: timedelta = liveness.STALE_AFTER,
) -> dict[str, Any]:
    """Apply the retention period: remove what is only worth keeping for a while.

    First, imports left ``running`` by a dead worker are marked failed and their staging
    tables dropped (``tracking.fail_dead_imports`` with ``stale_after``), whatever their age.

    Removes the failed-row records (``import_failed_rows``) written at or before the
    cut-off, except those of imports still running; removes files in ``error_dir`` (exported
    failed-row CSVs) last changed at or before the cut-off; and drops leftover staging tables
    (``hi_stage_<id>``) of imports that ended at or before the cut-off and hold no rows
    waiting for review (a failed import's staging is what a retry resumes from). History rows
    (with their error summaries) are kept. One audit entry (``import_id`` NULL) records what
    was removed.

    Args:
        db: the target database.
        older_than_days: the retention period in days; 0 removes everything eligible now.
        now: the current time (tests pass their own).
        error_dir: folder of exported error files, or ``None``.
        actor: who asked, for the audit entry.

    Returns:
        ``dead_imports_failed``, ``failed_rows_deleted``, ``error_files_deleted``,
        ``staging_tables_dropped`` (counts) and ``cutoff`` (the instant, ISO text).
    """
    cutoff = (now or records.utcnow()) - timedelta(days=older_than_days)
    staged_before = set(_staging_tables(db))
    dead = liveness.fail_dead_imports(db, stale_after=stale_after, found_by="histimport cleanup")
    h, failed = db.tables.import_history, db.tables.import_failed_rows
    active = sa.select(h.c.import_id).where(h.c.status.in_(ACTIVE))
    with db.engine.begin() as conn:
        deleted = conn.execute(
            sa.delete(failed).where(
                failed.c.created_at <= cutoff, failed.c.import_id.not_in(active)
            )
        ).rowcount
    files = 0
    for path in _old_files(error_dir, cutoff):
        path.unlink(missing_ok=True)
        files += 1
    dropped = _expired_staging(db, cutoff)
    for import_id in dropped:
        load.drop_staging(db, import_id)
    counts: dict[str, Any] = {
        "dead_imports_failed": len(dead),
        "failed_rows_deleted": int(deleted or 0),
        "error_files_deleted": files,
        "staging_tables_dropped": len(dropped) + len(staged_before.intersection(dead)),
    }
    with db.engine.begin() as conn:
        records.record_audit(
            conn,
            db,
            None,
            AuditAction.CLEANUP,
            actor,
            {**counts, "older_than_days": older_than_days, "cutoff": cutoff.isoformat()},
        )
    return {**counts, "cutoff": cutoff.isoformat()}


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
