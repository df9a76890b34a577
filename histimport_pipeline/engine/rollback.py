"""Exact rollback of an import.

The rows an import created are deleted and the before-images of rows it updated or deleted
are inserted back, in one transaction; so are the master rows its reconciliation created
(policy ``create``). A row that a later import changed belongs to that import now: rolling
back underneath it would lose the later change, so the rollback refuses and names those
imports, unless asked to cascade (newest first). The same holds for a later import whose
rows point at a master row this one created. An archived import (``tracking.cleanup``) is
never rolled back: its before-images are gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine import reconciliation, tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import (
    ImportArchivedError,
    ImportNotFoundError,
    RollbackConflictError,
)
from histimport_pipeline.engine.models import AuditAction, FileStatus, ImportStatus, MatchDecision

_LOADED = (ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value)


@dataclass(frozen=True)
class RolledBack:
    """One import that a rollback undid."""

    import_id: int
    target_table: str
    rows_deleted: int
    rows_restored: int
    master_rows_deleted: int = 0


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did; ``already`` when the import was rolled back before."""

    import_id: int
    undone: tuple[RolledBack, ...] = ()
    already: bool = False
    nothing_loaded: bool = False


def later_imports_touching(conn: sa.Connection, db: Database, import_id: int) -> list[int]:
    """Imports (not rolled back) that updated or deleted rows written by ``import_id``."""
    images = db.tables.import_row_images
    history = db.tables.import_history
    writer = images.c.row_data["_import_id"].as_integer()
    rows = conn.execute(
        sa.select(images.c.import_id)
        .distinct()
        .join(history, history.c.import_id == images.c.import_id)
        .where(
            images.c.import_id != import_id,
            history.c.status != ImportStatus.ROLLED_BACK.value,
            writer == import_id,
        )
    )
    return sorted(r[0] for r in rows)


def rollback_import(
    db: Database, import_id: int, *, cascade: bool = False, actor: str | None = None
) -> RollbackResult:
    """Roll back ``import_id`` (and, with ``cascade``, the later imports that depend on it).

    Running it twice is harmless: the second time reports ``already``.

    Raises:
        ImportNotFoundError: no such import.
        RollbackConflictError: later imports changed its rows and ``cascade`` is off.
        ImportArchivedError: the import, or a later one that may depend on it, was archived
            by the retention cleanup (its rollback records are gone).
    """
    history = db.tables.import_history
    with db.engine.begin() as conn:
        row = conn.execute(
            sa.select(history.c.status, history.c.archived_at, history.c.target_table).where(
                history.c.import_id == import_id
            )
        ).first()
        if row is None:
            raise ImportNotFoundError(import_id)
        if row.status == ImportStatus.ROLLED_BACK.value:
            return RollbackResult(import_id=import_id, already=True)
        if row.status not in _LOADED:
            return RollbackResult(import_id=import_id, nothing_loaded=True)
        if row.archived_at is not None:
            raise ImportArchivedError(import_id, import_id, row.archived_at)
        _refuse_under_archived(conn, db, import_id, row.target_table)
        order = _dependents(conn, db, import_id)
        if len(order) > 1 and not cascade:
            raise RollbackConflictError(import_id, sorted(set(order) - {import_id}))
        undone = [
            _undo(conn, db, i, actor, cascade_of=import_id if i != import_id else None)
            for i in sorted(order, reverse=True)
        ]
    return RollbackResult(import_id=import_id, undone=tuple(undone))


def rollback_preview(db: Database, import_id: int) -> dict[str, Any]:
    """What :func:`rollback_import` would undo now, without changing anything (the
    confirmation step of the web page).

    Long because: one reader transaction checks each reason a rollback would refuse, then
    counts what it would undo.

    Returns:
        ``import_id``, ``status``, ``dataset``, ``file_name``, ``target_table``;
        ``possible`` (whether a rollback would undo anything) and ``reason`` (why not:
        already rolled back, loaded nothing, archived, or a later archived import depends on
        it; ``None`` when possible); ``rows_to_delete`` (its rows still in the table),
        ``rows_to_restore`` (the before-images of rows it updated or deleted),
        ``master_rows_to_delete`` (master rows its reconciliation created) and ``dependents``
        (later imports that changed its rows or use its master rows: they are rolled back
        with it, newest first, and only with ``cascade``).

    Raises:
        ImportNotFoundError: no such import.
    """
    h, images = db.tables.import_history, db.tables.import_row_images
    matches = db.tables.import_reconciliation_matches
    with db.reader() as conn:
        row = conn.execute(
            sa.select(
                h.c.status, h.c.archived_at, h.c.target_table, h.c.dataset, h.c.file_name
            ).where(h.c.import_id == import_id)
        ).first()
        if row is None:
            raise ImportNotFoundError(import_id)
        out: dict[str, Any] = {
            "import_id": import_id,
            "status": row.status,
            "dataset": row.dataset,
            "file_name": row.file_name,
            "target_table": row.target_table,
            "possible": False,
            "reason": None,
            "rows_to_delete": 0,
            "rows_to_restore": 0,
            "master_rows_to_delete": 0,
            "dependents": [],
        }
        if row.status == ImportStatus.ROLLED_BACK.value:
            return out | {"reason": f"import {import_id} was rolled back already"}
        if row.status not in _LOADED:
            return out | {"reason": f"import {import_id} loaded nothing (status {row.status})"}
        try:
            if row.archived_at is not None:
                raise ImportArchivedError(import_id, import_id, row.archived_at)
            _refuse_under_archived(conn, db, import_id, row.target_table)
        except ImportArchivedError as exc:
            return out | {"reason": str(exc)}
        if sa.inspect(conn).has_table(row.target_table):
            target = sa.Table(row.target_table, sa.MetaData(), autoload_with=conn)
            out["rows_to_delete"] = int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(target)
                    .where(target.c._import_id == import_id)
                ).scalar_one()
            )
        out["rows_to_restore"] = int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    images.c.import_id == import_id, images.c.target_table == row.target_table
                )
            ).scalar_one()
        )
        out["master_rows_to_delete"] = int(
            conn.execute(
                sa.select(sa.func.count(sa.distinct(matches.c.matched_id))).where(
                    matches.c.import_id == import_id,
                    matches.c.decision == MatchDecision.CREATED.value,
                )
            ).scalar_one()
        )
        out["dependents"] = [i for i in _dependents(conn, db, import_id) if i != import_id]
    return out | {"possible": True}


def _refuse_under_archived(
    conn: sa.Connection, db: Database, import_id: int, target_table: str
) -> None:
    """Refuse when a later loaded import that may depend on this one is archived: its
    before-images and reconciliation matches, which :func:`_dependents` reads, are gone.

    It may depend on this one when it wrote the same table or, when this import created
    master rows, whatever it wrote (its rows may point at them).

    Raises:
        ImportArchivedError: naming the oldest such import.
    """
    h, m = db.tables.import_history, db.tables.import_reconciliation_matches
    created = conn.execute(
        sa.select(m.c.match_id)
        .where(m.c.import_id == import_id, m.c.decision == MatchDecision.CREATED.value)
        .limit(1)
    ).first()
    query = sa.select(h.c.import_id, h.c.archived_at).where(
        h.c.import_id > import_id, h.c.archived_at.is_not(None), h.c.status.in_(_LOADED)
    )
    if created is None:
        query = query.where(h.c.target_table == target_table)
    later = conn.execute(query.order_by(h.c.import_id).limit(1)).first()
    if later is not None:
        raise ImportArchivedError(import_id, int(later.import_id), later.archived_at)


def _dependents(conn: sa.Connection, db: Database, import_id: int) -> list[int]:
    """``import_id`` and every later import that transitively changed its rows or used the
    master rows it created."""
    seen = {import_id}
    todo = [import_id]
    while todo:
        current = todo.pop()
        later_ones = later_imports_touching(conn, db, current)
        later_ones += reconciliation.imports_using_created_masters(conn, db, current)
        for later in later_ones:
            if later not in seen:
                seen.add(later)
                todo.append(later)
    return sorted(seen)


def _undo(
    conn: sa.Connection, db: Database, import_id: int, actor: str | None, cascade_of: int | None
) -> RolledBack:
    history = db.tables.import_history
    started: dict[str, object] = {} if cascade_of is None else {"cascade_of": cascade_of}
    tracking.record_audit(conn, db, import_id, AuditAction.ROLLBACK_STARTED, actor, started)
    info = conn.execute(
        sa.select(history.c.target_table, history.c.dataset, history.c.file_sha256).where(
            history.c.import_id == import_id
        )
    ).one()
    deleted = restored = 0
    if sa.inspect(conn).has_table(info.target_table):
        target = sa.Table(info.target_table, sa.MetaData(), autoload_with=conn)
        deleted = int(
            conn.execute(sa.delete(target).where(target.c._import_id == import_id)).rowcount
        )
        restored = load.restore_images(conn, db, info.target_table, import_id)
    masters_deleted = reconciliation.drop_created_masters(conn, db, import_id)
    tracking.update_import(conn, db, import_id, status=ImportStatus.ROLLED_BACK.value)
    tracking.set_file_status(
        conn, db, info.dataset, info.file_sha256, import_id, FileStatus.ROLLED_BACK
    )
    details: dict[str, object] = {
        "rows_deleted": deleted,
        "rows_restored": restored,
        "master_rows_deleted": masters_deleted,
    }
    if cascade_of is not None:
        details["cascade_of"] = cascade_of
    tracking.record_audit(conn, db, import_id, AuditAction.ROLLED_BACK, actor, details)
    return RolledBack(import_id, info.target_table, deleted, restored, masters_deleted)
