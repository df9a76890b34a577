"""Writing the target: the append, upsert and replace_date strategies.

The target write happens in one statement per step, inside the caller's transaction, together
with the tracking rows. Rows an upsert changes or a replace deletes are first copied to
``import_row_images`` (see ``loading.images``) so that a rollback can put them back exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.selectable import NamedFromClause

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.loading.images import save_images
from histimport_pipeline.engine.loading.staging_tables import (
    duplicate_failure,
    staging_name,
    staging_table,
)
from histimport_pipeline.engine.loading.targets import (
    COUNT,
    add_primary_key,
    create_target_keyed_later,
    data_columns,
    ensure_target,
    qualified_name,
    row_key_columns,
    written_columns,
)
from histimport_pipeline.engine.models import ImageOperation
from histimport_pipeline.engine.spec import DatasetSpec, Strategy


@dataclass(frozen=True)
class WriteCounts:
    """What a strategy did to the target table."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    #: Staged rows whose key already was in the table under the append strategy.
    conflicts: int = 0


#: Writes an import's rows straight into the target table (given) and says how many.
DirectWrite = Callable[[sa.Table], int]


def write_target(
    conn: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    import_id: int,
    business_date: date | None,
    strategy: Strategy | None = None,
    direct: DirectWrite | None = None,
    target: sa.Table | None = None,
    staged_rows: int | None = None,
) -> WriteCounts:
    """Write the staged rows that are not on hold to the target, in ``conn``'s transaction.

    Args:
        strategy: overrides the spec's strategy (loading rows released from review after a
            ``replace_date`` import appends them: the day was replaced already).
        direct: writes the rows itself (see ``loads_directly``) instead of the staging table.
        target: the target as ``ensure_target`` returned it in this transaction, if it did.
        staged_rows: the staging table's row count, if the caller just counted it.

    Returns:
        Created, updated, unchanged and deleted counts.
    """
    strategy = strategy or spec.strategy
    new: sa.Table | None = None
    if target is None and strategy is Strategy.APPEND:
        new = target = create_target_keyed_later(conn, spec)
    if target is None:
        target = ensure_target(conn, spec)
    rows = _ready_rows(conn, db, spec, import_id, business_date, target, staged_rows)
    if new is not None:
        # A new table is empty and the staged keys are distinct: every row is created.
        created = rows.insert()
        add_primary_key(conn, spec)
        return WriteCounts(created=created)
    if strategy is Strategy.APPEND:
        return _append(rows, direct)
    if strategy is Strategy.REPLACE_DATE:
        return _replace_date(rows, db, import_id, business_date, direct)
    return _upsert(rows, db, import_id)


@dataclass(frozen=True)
class _ReadyRows:
    """An import's staged rows that are not on hold, and the statements that write them."""

    conn: sa.Connection
    spec: DatasetSpec
    target: sa.Table
    #: The staging table, aliased ``s``.
    stage: NamedFromClause
    ready: sa.ColumnElement[bool]
    names: list[str]
    #: The system columns' values (``_import_id``, ``_source_row``, ...), by column.
    system: dict[str, Any]
    #: The staging table's row count, if the caller just counted it.
    staged_rows: int | None

    def count(self) -> int:
        """How many rows are ready."""
        if self.staged_rows is not None and not self.spec.references:
            return self.staged_rows  # nothing is held back without reconciliation
        query = sa.select(sa.func.count()).select_from(self.stage).where(self.ready)
        return int(self.conn.execute(query).scalar_one())

    def insert(self, where: sa.ColumnElement[bool] | None = None) -> int:
        """Insert the ready rows (matching ``where``) into the target; how many."""
        cols = [*self.names, *self.system]
        stage = self.stage
        select = sa.select(*(stage.c[n] for n in self.names), *self.system.values()).where(
            self.ready
        )
        if where is not None:
            select = select.where(where)
        result = self.conn.execute(
            sa.insert(self.target).from_select(cols, select), execution_options=COUNT
        )
        return int(result.rowcount)

    def insert_all(self, direct: DirectWrite | None) -> int:
        """Every ready row, or the direct write's rows."""
        return direct(self.target) if direct is not None else self.insert()

    def insert_new_keys(self) -> int:
        """The ready rows whose key is not in the target yet."""
        tgt = self.target.alias("t")
        on_key = sa.and_(*(tgt.c[k] == self.stage.c[k] for k in self.spec.key))
        return self.insert(~sa.exists().where(on_key))


def _ready_rows(
    conn: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    import_id: int,
    business_date: date | None,
    target: sa.Table,
    staged_rows: int | None,
) -> _ReadyRows:
    """The write's rows: the staging table's rows without a hold, with their system columns."""
    stage = staging_table(db, spec, import_id).alias("s")
    names = written_columns(spec)
    ready = stage.c._hold.is_(None)
    system: dict[str, Any] = {
        "_import_id": sa.literal(import_id, sa.BigInteger),
        "_source_row": stage.c._source_row,
        "_loaded_at": sa.func.now(),
    }
    if "_business_date" in target.c:
        system["_business_date"] = sa.literal(business_date, sa.Date)
    return _ReadyRows(conn, spec, target, stage, ready, names, system, staged_rows)


def _append(rows: _ReadyRows, direct: DirectWrite | None) -> WriteCounts:
    """append: insert every row; with a key, only rows whose key is new (the rest conflict).

    A direct write (with a key: the one pass into the keyed target, whose primary key let
    every row in) is all created."""
    if rows.spec.key and direct is None:
        staged = rows.count()
        created = rows.insert_new_keys()
        return WriteCounts(created=created, conflicts=staged - created)
    return WriteCounts(created=rows.insert_all(direct))


def _replace_date(
    rows: _ReadyRows,
    db: Database,
    import_id: int,
    business_date: date | None,
    direct: DirectWrite | None,
) -> WriteCounts:
    """replace_date: images of the day's rows, delete them, insert the import's rows."""
    target = rows.target
    where = target.c._business_date == business_date
    key = row_key_columns(rows.spec, target)
    save_images(rows.conn, db, target, import_id, ImageOperation.DELETE, where, key)
    deleted = int(rows.conn.execute(sa.delete(target).where(where)).rowcount)
    return WriteCounts(created=rows.insert_all(direct), deleted=deleted)


def _upsert(rows: _ReadyRows, db: Database, import_id: int) -> WriteCounts:
    """upsert: images of the rows about to change, then update them, then insert new keys."""
    staged = rows.count()
    others = [n for n in rows.names if n not in rows.spec.key]
    write = _upsert_postgresql if db.dialect == "postgresql" else _upsert_portable
    created, updated = write(rows, db, import_id, others)
    return WriteCounts(created=created, updated=updated, unchanged=staged - created - updated)


def _upsert_portable(
    rows: _ReadyRows, db: Database, import_id: int, others: Sequence[str]
) -> tuple[int, int]:
    """Upsert in portable statements (SQLite): images of the rows whose values differ, their
    update, then the insert of the new keys.

    Returns:
        Rows created and rows updated.
    """
    conn, spec, target, stage, ready = rows.conn, rows.spec, rows.target, rows.stage, rows.ready
    updated = 0
    if others:
        on_key = sa.and_(*(target.c[k] == stage.c[k] for k in spec.key))
        changed = sa.or_(*(target.c[n].is_distinct_from(stage.c[n]) for n in others))
        differs = sa.exists().where(on_key, changed, ready)
        save_images(conn, db, target, import_id, ImageOperation.UPDATE, differs, spec.key)
        values: dict[str, Any] = {n: stage.c[n] for n in others} | rows.system
        result = conn.execute(sa.update(target).values(values).where(on_key, changed, ready))
        updated = int(result.rowcount)
    return rows.insert_new_keys(), updated


def _upsert_postgresql(
    rows: _ReadyRows, db: Database, import_id: int, others: Sequence[str]
) -> tuple[int, int]:
    """Upsert on PostgreSQL in one statement: one join of the staged rows with the target
    sorts each into new, changed or unchanged; the changed ones leave their before-image and
    are updated, the new ones are inserted (the portable path joins three times).

    The join walks the staged key's index and the target's key in step, so the new rows
    reach the target's key in key order, which is kinder to its index than file order.
    Joining once where the update and the insert each joined took 0.4 s off 3.1 s (flights,
    half of the 336,776 keys present).

    Returns:
        Rows created and rows updated.
    """
    conn, spec, target = rows.conn, rows.spec, rows.target
    q = conn.dialect.identifier_preparer.quote
    stage = qualified_name(conn, db.schema or "public", staging_name(import_id))
    images = qualified_name(conn, db.schema, "import_row_images")
    table = q(target.name)
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in spec.key)
    found = "t.ctid IS NOT NULL"  # the left join found the row's key in the target
    changed = " OR ".join(f"t.{q(c)} IS DISTINCT FROM s.{q(c)}" for c in others) or "false"
    params: dict[str, Any] = {"import_id": import_id, "table": target.name, "op": "update"}
    key_parts = []
    for i, k in enumerate(spec.key):
        params[f"k{i}"] = k
        key_parts.append(f"CAST(:k{i} AS text), t.{q(k)}")
    business = "_business_date" in rows.system
    if business:
        params["business_date"] = rows.system["_business_date"].value
    names = [q(n) for n in rows.names]
    sets = [f"{q(c)} = j.{q(c)}" for c in others]
    sets += ["_import_id = :import_id", "_source_row = j.__hi_source_row", "_loaded_at = now()"]
    inserted = [*names, "_import_id", "_source_row", "_loaded_at"]
    values = [*(f"j.{n}" for n in names), ":import_id", "j.__hi_source_row", "now()"]
    if business:
        sets.append("_business_date = :business_date")
        inserted.append("_business_date")
        values.append(":business_date")
    sql = f"""
        WITH j AS MATERIALIZED (
            SELECT t.ctid AS __hi_tid, s._source_row AS __hi_source_row,
                   CASE WHEN {found} THEN to_jsonb(t) END AS __hi_image,
                   CASE WHEN {found} THEN jsonb_build_object({", ".join(key_parts)}) END
                       AS __hi_key,
                   {", ".join(f"s.{n}" for n in names)}
            FROM {stage} AS s LEFT JOIN {table} AS t ON {on}
            WHERE s._hold IS NULL AND (NOT ({found}) OR ({changed}))
        ), saved AS (
            INSERT INTO {images} (import_id, target_table, operation, row_key, row_data, created_at)
            SELECT :import_id, :table, :op, __hi_key, __hi_image, now()
            FROM j WHERE __hi_tid IS NOT NULL
        ), updated AS (
            UPDATE {table} AS t SET {", ".join(sets)}
            FROM j WHERE j.__hi_tid IS NOT NULL AND t.ctid = j.__hi_tid
            RETURNING 1
        ), created AS (
            INSERT INTO {table} ({", ".join(inserted)})
            SELECT {", ".join(values)} FROM j WHERE j.__hi_tid IS NULL
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM created), (SELECT count(*) FROM updated)
    """
    created, updated = conn.execute(sa.text(sql), params).one()
    return int(created), int(updated)


def record_append_conflicts(
    conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int
) -> int:
    """Under ``append`` with a key, record staged rows whose key is already in the table.

    Such rows are skipped by the write (they would violate the key) and stored as failed rows
    of category ``duplicate`` naming the import that loaded the key (or saying that the row
    predates histimport, in an adopted table).

    Returns:
        How many staged rows conflict.
    """
    if not sa.inspect(conn).has_table(spec.target_table):
        return 0
    target = sa.Table(spec.target_table, sa.MetaData(), autoload_with=conn)
    stage = staging_table(db, spec, import_id)
    names = data_columns(spec)
    on_key = sa.and_(*(target.c[k] == stage.c[k] for k in spec.key))
    rows = conn.execute(
        sa.select(stage, target.c._import_id.label("_holder"))
        .join(target, on_key)
        .where(stage.c._hold.is_(None))
    ).mappings()
    records = []
    for row in rows:
        key_text = ", ".join(f"{k}={row[k]!s}" for k in spec.key)
        holder = row["_holder"]
        by = "a row that predates histimport" if holder is None else f"loaded by import {holder}"
        message = f"key {key_text} is already in {spec.target_table} ({by}); the row was skipped"
        records.append(duplicate_failure(import_id, spec, names, row, message))
    if records:
        conn.execute(sa.insert(db.tables.import_failed_rows), records)
    return len(records)
