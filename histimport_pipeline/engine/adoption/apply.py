"""Applying an adoption plan in one transaction with its record, and undoing it.

Locks (PostgreSQL): the transaction first takes the table in SHARE ROW EXCLUSIVE mode, which
stops writers and other schema changes but not readers, plans again under it and builds the
unique index on the key (readers go on reading meanwhile). Only the ALTER TABLEs that follow
take the ACCESS EXCLUSIVE lock that readers wait for, and those change the catalog only
(nullable columns without a default): from there to the commit is milliseconds. Every lock is
asked for with a ``lock_timeout``, so that adoption never waits behind a long transaction
while the readers that arrive after it queue behind adoption. SQLite takes its database write
lock at BEGIN; readers in WAL mode are not blocked at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.adoption.plan import AdoptionPlan, current_adoption, plan_in
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import (
    AdoptionBusyError,
    AdoptionError,
    AdoptionRefusedError,
)
from histimport_pipeline.engine.loading.targets import lock_target
from histimport_pipeline.engine.models import AdoptionStatus, ImportStatus
from histimport_pipeline.engine.spec import DatasetSpec

#: How long adoption waits for a lock on the table before it gives up (seconds).
LOCK_TIMEOUT_S = 5.0
#: PostgreSQL's SQLSTATE of a lock_timeout.
_LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class AdoptionRecord:
    """One row of ``table_adoptions``: an adoption applied (or undone)."""

    adoption_id: int
    dataset: str
    table: str
    status: AdoptionStatus
    adopted_by: str | None
    adopted_at: datetime
    rows_before: int
    ddl: tuple[str, ...]
    undo_ddl: tuple[str, ...]
    undone_by: str | None = None
    undone_at: datetime | None = None


def _record(row: dict[str, Any]) -> AdoptionRecord:
    return AdoptionRecord(
        adoption_id=int(row["adoption_id"]),
        dataset=row["dataset"],
        table=row["target_table"],
        status=AdoptionStatus(row["status"]),
        adopted_by=row["adopted_by"],
        adopted_at=row["adopted_at"],
        rows_before=int(row["rows_before"]),
        ddl=tuple(row["ddl"]),
        undo_ddl=tuple(row["undo_ddl"]),
        undone_by=row.get("undone_by"),
        undone_at=row.get("undone_at"),
    )


@contextmanager
def _locked(db: Database, table: str, lock_timeout_s: float) -> Iterator[sa.Connection]:
    """A transaction holding ``table`` against writers and other schema changes (readers go
    on); a lock that takes longer than ``lock_timeout_s`` ends it with AdoptionBusyError."""
    try:
        with db.engine.begin() as conn:
            if db.dialect == "postgresql":
                ms = max(1, int(lock_timeout_s * 1000))
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                lock_target(conn, table)
                quoted = conn.dialect.identifier_preparer.quote(table)
                conn.exec_driver_sql(f"LOCK TABLE {quoted} IN SHARE ROW EXCLUSIVE MODE")
            yield conn
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise AdoptionBusyError(table, lock_timeout_s) from None
        raise


def apply_adoption(
    db: Database,
    spec: DatasetSpec,
    reviewed: AdoptionPlan,
    actor: str | None = None,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> AdoptionRecord:
    """Apply the reviewed plan and record it, in one transaction.

    The plan is made again under the lock; if the table changed since it was reviewed (other
    DDL, a key that now repeats), nothing is applied.

    Args:
        reviewed: the plan the user saw (:func:`plan_adoption`).
        actor: who adopts (recorded).
        lock_timeout_s: how long to wait for a lock on the table.

    Returns:
        The adoption's record.

    Raises:
        AdoptionRefusedError: the plan has problems.
        AdoptionError: the table is adopted already, or changed since the review.
        AdoptionBusyError: another transaction held the table too long.
    """
    if reviewed.problems:
        raise AdoptionRefusedError(reviewed.table, spec.name, list(reviewed.problems))
    if reviewed.adoption_id is not None:
        raise AdoptionError(
            reviewed.table,
            f"is adopted already (adoption {reviewed.adoption_id}); undo it with "
            f"`histimport adopt {spec.name} --undo`",
        )
    t = db.tables.table_adoptions
    with _locked(db, reviewed.table, lock_timeout_s) as conn:
        plan = plan_in(conn, db, spec)
        if plan.problems:
            raise AdoptionRefusedError(plan.table, spec.name, list(plan.problems))
        if plan.statements != reviewed.statements or plan.adoption_id is not None:
            raise AdoptionError(
                plan.table,
                "changed since the plan was made; nothing was changed. Review the new plan "
                f"with `histimport adopt {spec.name}`",
            )
        for statement in plan.statements:
            conn.exec_driver_sql(statement)
        adoption_id = conn.execute(
            sa.insert(t)
            .values(
                dataset=spec.name,
                target_table=plan.table,
                status=AdoptionStatus.APPLIED.value,
                adopted_by=actor,
                adopted_at=datetime.now(UTC),
                rows_before=plan.rows,
                ddl=list(plan.statements),
                undo_ddl=list(plan.undo),
                added=plan.added,
            )
            .returning(t.c.adoption_id)
        ).scalar_one()
        row = conn.execute(sa.select(t).where(t.c.adoption_id == adoption_id)).mappings().one()
    return _record(dict(row))


def undo_adoption(
    db: Database,
    spec: DatasetSpec,
    actor: str | None = None,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> AdoptionRecord:
    """Remove exactly what the table's adoption added (its recorded undo DDL), in one
    transaction, and mark the record undone.

    Refused while rows of the table carry an import id: they would lose their lineage and
    their imports their rollback. Rolling those imports back first puts the rows that
    predate histimport back as they were, with no import id.

    Raises:
        AdoptionError: the table is not adopted, or imports' rows are still in it.
        AdoptionBusyError: another transaction held the table too long.
    """
    t = db.tables.table_adoptions
    table = spec.target_table
    with _locked(db, table, lock_timeout_s) as conn:
        found = current_adoption(conn, db, table)
        if found is None:
            raise AdoptionError(
                table,
                f"is not adopted, so there is nothing to undo (see `histimport adopt {spec.name}`)",
            )
        _refuse_imported_rows(conn, table)
        for statement in found["undo_ddl"]:
            conn.exec_driver_sql(statement)
        conn.execute(
            sa.update(t)
            .where(t.c.adoption_id == found["adoption_id"])
            .values(
                status=AdoptionStatus.UNDONE.value, undone_by=actor, undone_at=datetime.now(UTC)
            )
        )
        row = (
            conn.execute(sa.select(t).where(t.c.adoption_id == found["adoption_id"]))
            .mappings()
            .one()
        )
    return _record(dict(row))


def _refuse_imported_rows(conn: sa.Connection, table: str) -> None:
    target = sa.table(table, sa.column("_import_id"))
    imports = (
        conn.execute(
            sa.select(target.c._import_id)
            .where(target.c._import_id.is_not(None))
            .distinct()
            .order_by(target.c._import_id)
            .limit(10)
        )
        .scalars()
        .all()
    )
    if imports:
        listed = ", ".join(str(i) for i in imports)
        raise AdoptionError(
            table,
            f"holds rows of import(s) {listed}: roll them back first (`histimport rollback "
            "ID`), which restores the rows that predate histimport; nothing was changed",
        )


def adoption_of(db: Database, table: str) -> AdoptionRecord | None:
    """The adoption of ``table`` that stands, or ``None`` (the table was not adopted)."""
    with db.reader() as conn:
        if not sa.inspect(conn).has_table("table_adoptions", schema=db.schema):
            return None
        found = current_adoption(conn, db, table)
    return _record(found) if found is not None else None


#: Imports that end with a materialization of the dataset's asset.
_MATERIALIZED = (
    ImportStatus.SUCCESS.value,
    ImportStatus.PARTIAL.value,
    ImportStatus.REJECTED.value,
    ImportStatus.DUPLICATE.value,
    ImportStatus.ROLLED_BACK.value,
)


def rows_before_first_import(db: Database, table: str, import_id: int) -> int | None:
    """The rows ``table`` held when it was adopted, if ``import_id`` is the first import into
    it since (the first materialization of its asset shows them); else ``None``."""
    found = adoption_of(db, table)
    if found is None:
        return None
    h = db.tables.import_history
    earlier = sa.select(h.c.import_id).where(
        h.c.target_table == table,
        h.c.import_id < import_id,
        h.c.started_at >= found.adopted_at,
        h.c.status.in_(_MATERIALIZED),
    )
    with db.reader() as conn:
        if conn.execute(earlier.limit(1)).first() is not None:
            return None
    return found.rows_before
