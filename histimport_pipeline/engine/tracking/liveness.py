"""Liveness of imports: a worker that died leaves its import ``running``; these find such
imports (by process id on this host, else by heartbeat age) and mark them failed, and say
which import holds a file's content right now.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import AuditAction, FileStatus, ImportStatus
from histimport_pipeline.engine.tracking.records import (
    record_audit,
    record_nothing_loaded,
    record_outcome,
    set_file_status,
    utcnow,
)

#: A running import whose worker on another host (or, between steps, no worker) has not sent a
#: heartbeat for this long is taken for dead. On the same host, a dead process id decides at
#: once. ``HISTIMPORT_STALE_AFTER_SECONDS`` overrides it for the CLI.
STALE_AFTER = timedelta(minutes=10)
_ACTIVE = (ImportStatus.RUNNING.value, ImportStatus.PENDING.value)


def fail_dead_imports(
    db: Database,
    dataset: str | None = None,
    *,
    stale_after: timedelta = STALE_AFTER,
    found_by: str = "a later import",
) -> list[int]:
    """Mark imports left ``running`` (or ``pending``) by a dead worker as failed.

    An import's worker is recorded as ``host:pid`` while a step runs, and cleared between
    steps run one by one (a Dagster run may run the next step in another process). It is
    dead when it ran on this host and that process is gone (or a zombie); otherwise, when
    its last sign of life is older than ``stale_after``: the newer of its heartbeat and its
    last progress write (``tracking.progress``: written during a PostgreSQL load too, which
    sends no heartbeat). The dead ones are marked failed (the row is
    changed only if it is still active, so an import that finishes meanwhile keeps its
    outcome), their claim on the file is released, the dataset's process status records the
    error, and their staging tables are dropped.

    Args:
        dataset: only this dataset's imports; ``None``: every dataset.
        stale_after: how old a heartbeat may be before its import counts as dead.
        found_by: who noticed, for the error message and the audit trail.

    Returns:
        The ids of the imports marked failed.
    """
    candidates = _dead(db, dataset, stale_after)
    marked = [int(row.import_id) for row in candidates if _fail_dead(db, row, found_by)]
    from histimport_pipeline.engine.loading import drop_staging

    for import_id in marked:
        drop_staging(db, import_id)
    return marked


def dead_imports(
    db: Database, dataset: str | None = None, *, stale_after: timedelta = STALE_AFTER
) -> list[int]:
    """The imports :func:`fail_dead_imports` would mark failed now, changing nothing (for
    ``histimport cleanup --dry-run``)."""
    return [int(r.import_id) for r in _dead(db, dataset, stale_after)]


def _dead(db: Database, dataset: str | None, stale_after: timedelta) -> list[Any]:
    t = db.tables.import_history
    here = socket.gethostname()
    query = sa.select(
        t.c.import_id,
        t.c.dataset,
        t.c.file_sha256,
        t.c.business_date,
        t.c.worker,
        t.c.heartbeat_at,
        t.c.progress_updated_at,
    ).where(t.c.status.in_(_ACTIVE))
    if dataset is not None:
        query = query.where(t.c.dataset == dataset)
    with db.reader() as conn:
        return [
            r
            for r in conn.execute(query)
            if _is_dead(
                r.worker, _last_sign(r.heartbeat_at, r.progress_updated_at), here, stale_after
            )
        ]


def _fail_dead(db: Database, row: Any, found_by: str) -> bool:
    """Mark one dead import failed in one transaction; ``False`` if it ended meanwhile."""
    t = db.tables.import_history
    sign = _last_sign(row.heartbeat_at, row.progress_updated_at)
    last = sign.isoformat(sep=" ", timespec="seconds") if sign else "never"
    message = (
        f"the worker running this import ({row.worker or 'between steps'}) died or stopped "
        f"sending heartbeats (last: {last}); found by {found_by}. Nothing was loaded: import "
        "the file again"
    )
    with db.engine.begin() as conn:
        stamp = utcnow()
        changed = conn.execute(
            sa.update(t)
            .where(t.c.import_id == row.import_id, t.c.status.in_(_ACTIVE))
            .values(
                status=ImportStatus.FAILED.value,
                error_message=message,
                finished_at=stamp,
                updated_at=stamp,
            )
        ).rowcount
        if not changed:
            return False
        if row.file_sha256:
            set_file_status(
                conn, db, row.dataset, row.file_sha256, row.import_id, FileStatus.FAILED
            )
        record_outcome(
            conn,
            db,
            dataset=row.dataset,
            import_id=row.import_id,
            ok=False,
            error=message,
            business_date=row.business_date,
        )
        record_nothing_loaded(conn, db, row.import_id)
        record_audit(
            conn,
            db,
            row.import_id,
            AuditAction.FAILED,
            "histimport",
            {"reason": "worker dead", "worker": row.worker, "found_by": found_by},
        )
    return True


def running_holder(db: Database, dataset: str, sha256: str) -> int | None:
    """The import that is loading this content right now (its claim is ``processing`` and
    it is still active), or ``None``."""
    t, h = db.tables.processed_files, db.tables.import_history
    with db.reader() as conn:
        holder = conn.execute(
            sa.select(h.c.import_id)
            .select_from(t.join(h, h.c.import_id == t.c.last_import_id))
            .where(
                t.c.dataset == dataset,
                t.c.sha256 == sha256,
                t.c.status == FileStatus.PROCESSING.value,
                h.c.status.in_(_ACTIVE),
            )
        ).scalar()
    return int(holder) if holder is not None else None


def _last_sign(heartbeat: datetime | None, progress: datetime | None) -> datetime | None:
    """The newer of an import's heartbeat and its last progress write."""
    stamps = [s if s.tzinfo else s.replace(tzinfo=UTC) for s in (heartbeat, progress) if s]
    return max(stamps, default=None)


def _is_dead(
    worker: str | None, heartbeat: datetime | None, here: str, stale_after: timedelta
) -> bool:
    host, _, pid_text = (worker or "").rpartition(":")
    if host == here and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return _is_zombie(pid)
    if heartbeat is None:
        return True
    if heartbeat.tzinfo is None:
        heartbeat = heartbeat.replace(tzinfo=UTC)
    return utcnow() - heartbeat > stale_after


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def imports_of_run(conn: sa.Connection, db: Database, run_id: str) -> list[dict[str, Any]]:
    """Imports recorded by one Dagster run, oldest first."""
    t = db.tables.import_history
    rows = conn.execute(
        sa.select(t).where(t.c.dagster_run_id == run_id).order_by(t.c.import_id)
    ).mappings()
    return [dict(r) for r in rows]


def fail_unfinished_imports_of_run(db: Database, run_id: str, reason: str) -> list[int]:
    """Mark the imports a dead run left ``running``/``pending`` as failed.

    Returns:
        The ids marked failed (none when the run recorded its own outcome).
    """
    t = db.tables.import_history
    marked: list[int] = []
    with db.engine.begin() as conn:
        for row in imports_of_run(conn, db, run_id):
            if row["status"] not in (ImportStatus.RUNNING.value, ImportStatus.PENDING.value):
                continue
            stamp = utcnow()
            conn.execute(
                sa.update(t)
                .where(t.c.import_id == row["import_id"])
                .values(
                    status=ImportStatus.FAILED.value,
                    error_message=reason,
                    finished_at=stamp,
                    updated_at=stamp,
                )
            )
            record_nothing_loaded(conn, db, row["import_id"])
            if row["file_sha256"]:
                set_file_status(
                    conn,
                    db,
                    row["dataset"],
                    row["file_sha256"],
                    row["import_id"],
                    FileStatus.FAILED,
                )
            record_outcome(
                conn,
                db,
                dataset=row["dataset"],
                import_id=row["import_id"],
                ok=False,
                error=reason,
                business_date=row["business_date"],
            )
            record_audit(
                conn,
                db,
                row["import_id"],
                AuditAction.FAILED,
                "run-failure-sensor",
                {"reason": reason, "dagster_run_id": run_id},
            )
            marked.append(int(row["import_id"]))
    return marked
