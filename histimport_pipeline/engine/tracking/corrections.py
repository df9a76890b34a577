"""Corrections: a file dropped again, fixed, under the name of an import that failed or was
rejected (for a daily dataset: for the same business date) corrects that import.

The new import records the one it corrects (``corrects_import_id``) when it starts; once it
loads, every failure in that chain records the import that superseded it
(``superseded_by``), so none of them is the dataset's open failure any more, while their
history, failed rows and audit trail stay. :func:`failed_partitions` lists the open ones.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.models import AuditAction, ImportStatus
from histimport_pipeline.engine.tracking.records import record_audit

#: Statuses that end an import without loading it: the ones a correction supersedes.
FAILURES = (ImportStatus.FAILED.value, ImportStatus.REJECTED.value)
#: Statuses that say nothing about the file's content: skipped when looking for the latest.
_NOT_AN_OUTCOME = (
    ImportStatus.DUPLICATE.value,
    ImportStatus.RUNNING.value,
    ImportStatus.PENDING.value,
)


def failure_to_correct(
    conn: sa.Connection,
    db: Database,
    *,
    dataset: str,
    file_name: str,
    business_date: date | None,
    sha256: str,
) -> int | None:
    """The open failure a new import of ``file_name`` (or of ``business_date``) corrects.

    Rule: the latest earlier import of the dataset under the same file name (daily datasets:
    the same business date) that ended; it is corrected when it failed or was rejected, was
    not superseded yet and read other content (the same content again is a retry, not a
    correction).

    Returns:
        Its import id, or None.
    """
    h = db.tables.import_history
    same = h.c.business_date == business_date if business_date else h.c.file_name == file_name
    latest = conn.execute(
        sa.select(h.c.import_id, h.c.status, h.c.superseded_by, h.c.file_sha256)
        .where(h.c.dataset == dataset, same, h.c.status.not_in(_NOT_AN_OUTCOME))
        .order_by(h.c.import_id.desc())
        .limit(1)
    ).first()
    if latest is None or latest.status not in FAILURES or latest.superseded_by is not None:
        return None
    if latest.file_sha256 == sha256:
        return None
    return int(latest.import_id)


def supersede(conn: sa.Connection, db: Database, import_id: int, actor: str | None) -> list[int]:
    """Once ``import_id`` loaded: mark the failures it corrects (and the ones they corrected in
    turn) superseded by it, with an audit entry on each.

    Returns:
        The ids of the imports superseded now, newest first.
    """
    h = db.tables.import_history
    done: list[int] = []
    current = conn.execute(
        sa.select(h.c.corrects_import_id).where(h.c.import_id == import_id)
    ).scalar_one_or_none()
    while current is not None and current not in done:
        row = conn.execute(
            sa.select(h.c.status, h.c.superseded_by, h.c.corrects_import_id).where(
                h.c.import_id == current
            )
        ).first()
        if row is None or row.status not in FAILURES or row.superseded_by is not None:
            break
        conn.execute(sa.update(h).where(h.c.import_id == current).values(superseded_by=import_id))
        record_audit(conn, db, current, AuditAction.SUPERSEDED, actor, {"superseded_by": import_id})
        done.append(int(current))
        current = row.corrects_import_id
    return done


def superseded_partitions(db: Database, import_id: int) -> list[dict[str, Any]]:
    """The imports ``import_id`` superseded, with their partition keys (for the orchestrator
    to drop the failed partitions it no longer needs to show).

    Returns:
        One dict per import: import_id, partition_key, status.
    """
    h = db.tables.import_history
    with db.reader() as conn:
        found = conn.execute(
            sa.select(h.c.import_id, h.c.partition_key, h.c.status)
            .where(h.c.superseded_by == import_id)
            .order_by(h.c.import_id)
        ).mappings()
        return [dict(r) for r in found]


def failed_partitions(
    db: Database, dataset: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Partitions whose latest import failed or was rejected, oldest first; a failure that a
    corrected file superseded is not listed.

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
        .where(
            h.c.status.in_([ImportStatus.FAILED.value, ImportStatus.REJECTED.value]),
            h.c.superseded_by.is_(None),
        )
        .order_by(h.c.import_id)
    )
    if dataset:
        query = query.where(h.c.dataset == dataset)
    if since is not None:
        query = query.where(h.c.created_at >= since)
    with db.reader() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
