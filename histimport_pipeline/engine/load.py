"""Load: the target table, staging, and the write strategies with before-images.

Valid rows are first staged in a table of their own (PostgreSQL: an UNLOGGED table in the
tracking schema filled by COPY; SQLite: batched inserts). The target write then happens in
one statement per step, inside the caller's transaction, together with the tracking rows.
Every written row carries ``_import_id``, ``_source_row`` and ``_loaded_at``; rows an upsert
changes or a replace deletes are first copied to ``import_row_images`` so that a rollback can
put them back exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import SchemaChangeError
from histimport_pipeline.engine.models import ImageOperation, ValidRow
from histimport_pipeline.engine.reading import columnar
from histimport_pipeline.engine.spec import ColumnType, DatasetSpec, Partitioning, Strategy

#: INSERT ... SELECT reports its row count only when asked to (SQLAlchemy 2.x).
COUNT = {"preserve_rowcount": True}
#: PostgreSQL type names for binary COPY, by spec column type (see column_type()).
_PG_BINARY_TYPES = {
    ColumnType.STRING: "text",
    ColumnType.EMAIL: "text",
    ColumnType.ENUM: "text",
    ColumnType.INTEGER: "int8",
    ColumnType.DECIMAL: "numeric",
    ColumnType.BOOLEAN: "bool",
    ColumnType.DATE: "date",
    ColumnType.TIMESTAMP: "timestamp",
}
#: Rows per INSERT batch on SQLite.
SQLITE_BATCH = 5_000
#: ``work_mem`` of the transactions that join staged rows with the target (PostgreSQL).
WORK_MEM = "64MB"


def column_type(
    spec_type: ColumnType, scale: int, max_length: int | None
) -> sa.types.TypeEngine[Any]:
    """The SQL type a spec column gets in the target and staging tables."""
    match spec_type:
        case ColumnType.INTEGER:
            return sa.BigInteger()
        case ColumnType.DECIMAL:
            return sa.Numeric(38, scale)
        case ColumnType.BOOLEAN:
            return sa.Boolean()
        case ColumnType.DATE:
            return sa.Date()
        case ColumnType.TIMESTAMP:
            return sa.DateTime()
        case _:
            return sa.String(max_length) if max_length else sa.Text()


def _family(type_: sa.types.TypeEngine[Any]) -> str:
    """A coarse type family used to tell compatible from incompatible column changes."""
    if isinstance(type_, sa.Boolean):
        return "boolean"
    if isinstance(type_, sa.Integer):
        return "integer"
    if isinstance(type_, sa.Numeric):
        return "numeric"
    if isinstance(type_, sa.DateTime):
        return "timestamp"
    if isinstance(type_, sa.Date):
        return "date"
    if isinstance(type_, sa.String | sa.Text):
        return "text"
    return type(type_).__name__.lower()


def data_columns(spec: DatasetSpec) -> list[str]:
    """The spec's columns in declaration order (what the file provides)."""
    return list(spec.columns)


def reference_columns(spec: DatasetSpec) -> dict[str, sa.types.TypeEngine[Any]]:
    """The reference output columns (matched master ids) and their SQL types."""
    return {
        name: sa.BigInteger() if ref.id_type == "integer" else sa.Text()
        for name, ref in spec.references.items()
    }


def written_columns(spec: DatasetSpec) -> list[str]:
    """Columns an import writes to the target: the spec's, then the references'."""
    return [*spec.columns, *spec.references]


def target_table(spec: DatasetSpec, metadata: sa.MetaData | None = None) -> sa.Table:
    """The target table as the spec declares it (not reflected).

    The natural key is the primary key. A table without one has none: its rows are told
    apart by ``(_import_id, _source_row)``, which is unique, and a surrogate key's index would
    cost as much as a third of an append's time (tables made by earlier versions keep their
    ``_row_id``). ``_import_id`` is indexed for rollback and lineage: with a BRIN index
    (PostgreSQL) under ``append``, whose rows arrive in import order so that each import
    occupies a narrow range of pages; with a B-tree otherwise.
    """
    md = metadata or sa.MetaData()
    cols: list[sa.Column[Any]] = []
    for name, col in spec.columns.items():
        cols.append(
            sa.Column(
                name,
                column_type(col.type, col.scale, col.max_length),
                primary_key=name in spec.key,
                nullable=name not in spec.key,
            )
        )
    cols += [sa.Column(name, type_) for name, type_ in reference_columns(spec).items()]
    cols += [
        sa.Column("_import_id", sa.BigInteger, nullable=False),
        sa.Column("_source_row", sa.BigInteger),
        sa.Column("_loaded_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    ]
    if spec.partitioning is Partitioning.DAILY:
        cols.append(sa.Column("_business_date", sa.Date, index=True))
    table = sa.Table(spec.target_table, md, *cols)
    using = "brin" if spec.strategy is Strategy.APPEND else None
    sa.Index(f"ix_{spec.target_table}__import_id"[:63], table.c._import_id, postgresql_using=using)
    return table


def row_key_columns(spec: DatasetSpec, target: sa.Table) -> list[str]:
    """Columns that identify a row of the target: the key, else ``_row_id`` in tables made by
    earlier versions, else ``(_import_id, _source_row)``."""
    if spec.key:
        return list(spec.key)
    if "_row_id" in target.c:
        return ["_row_id"]
    return ["_import_id", "_source_row"]


def loads_directly(db: Database, spec: DatasetSpec) -> bool:
    """Whether the load may COPY the checked file straight into the target, without staging.

    True on PostgreSQL for ``append`` and ``replace_date`` datasets without a key and without
    references: no step between validation and the write needs the rows (no in-file duplicate
    keys, no key conflicts, no reconciliation), and a staging copy would double the write.
    """
    return (
        db.dialect == "postgresql"
        and not spec.key
        and not spec.references
        and spec.strategy in (Strategy.APPEND, Strategy.REPLACE_DATE)
    )


def qualified_name(conn: sa.Connection, schema: str | None, name: str) -> str:
    """``"schema"."name"`` (or ``"name"``) quoted by the connection's dialect."""
    preparer = conn.dialect.identifier_preparer
    return f"{preparer.quote(schema)}.{preparer.quote(name)}" if schema else preparer.quote(name)


def ensure_target(conn: sa.Connection, spec: DatasetSpec) -> sa.Table:
    """Create the target table if missing, or add new optional columns to it.

    Concurrent imports may find the table missing (or short of a column) at the same moment:
    a change is made only under a lock on the table's name held to the end of ``conn``'s
    transaction (PostgreSQL: a transaction-scoped advisory lock; SQLite: the write lock its
    ``BEGIN IMMEDIATE`` took already), after looking again. The one that waited finds the
    table made and uses it. A table that needs no change takes no lock.

    Returns:
        The table as it is in the database after the change.

    Raises:
        SchemaChangeError: an existing column has another type, a new column is required or
            part of the key, or a system column is missing.
    """
    declared = target_table(spec)
    if _target_changes(conn, spec, declared) == []:
        return sa.Table(spec.target_table, sa.MetaData(), autoload_with=conn)
    lock_target(conn, spec.target_table)
    to_add = _target_changes(conn, spec, declared)
    if to_add is None:
        declared.create(conn)
        return declared
    preparer = conn.dialect.identifier_preparer
    for column in to_add:
        ddl_type = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.quote(spec.target_table)} "
            f"ADD COLUMN {preparer.quote(column.name)} {ddl_type}"
        )
    return sa.Table(spec.target_table, sa.MetaData(), autoload_with=conn)


def lock_target(conn: sa.Connection, table: str) -> None:
    """Serialise schema changes of ``table`` until ``conn``'s transaction ends.

    PostgreSQL: ``pg_advisory_xact_lock`` on a stable 64-bit hash of the schema-qualified
    name (two imports into different tables do not wait for each other). SQLite: nothing to
    do, every writing transaction holds the database's write lock from its ``BEGIN``.
    """
    if conn.dialect.name != "postgresql":
        return
    schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    name = f"histimport target {schema}.{table}".encode()
    key = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _target_changes(
    conn: sa.Connection, spec: DatasetSpec, declared: sa.Table
) -> list[sa.Column[Any]] | None:
    """The columns to add to the existing target (``[]``: none), ``None`` if it is missing.

    Raises:
        SchemaChangeError: see ``ensure_target``.
    """
    inspector = sa.inspect(conn)
    if not inspector.has_table(spec.target_table):
        return None
    existing = {c["name"]: c for c in inspector.get_columns(spec.target_table)}
    for system in ("_import_id", "_source_row", "_loaded_at"):
        if system not in existing:
            raise SchemaChangeError(
                spec.target_table,
                f"it exists but has no {system} column, so it was not created by histimport; "
                "point target_table at a new table",
            )
    problems = []
    to_add: list[sa.Column[Any]] = []
    for column in declared.columns:
        if column.name not in existing:
            if not column.nullable or column.primary_key:
                problems.append(f"new column {column.name!r} is required or part of the key")
            else:
                to_add.append(column)
            continue
        have, want = _family(existing[column.name]["type"]), _family(column.type)
        if have != want:
            problems.append(f"column {column.name!r} is {have} in the table but {want} in the spec")
    if problems:
        raise SchemaChangeError(spec.target_table, "; ".join(problems))
    return to_add


# Staging -------------------------------------------------------------------------------------


def staging_name(import_id: int) -> str:
    """Name of an import's staging table."""
    return f"hi_stage_{import_id}"


def staging_table(db: Database, spec: DatasetSpec, import_id: int) -> sa.Table:
    """The staging table of an import.

    Columns: ``_source_row``, the spec's columns, the reference output columns (filled by
    reconciliation) and ``_hold``: NULL for a row to load, ``review`` for a row waiting for
    a reconciliation decision, ``reject`` for a row that reconciliation failed.
    """
    md = sa.MetaData(schema=db.schema)
    cols: list[sa.Column[Any]] = [sa.Column("_source_row", sa.BigInteger, nullable=False)]
    for name, col in spec.columns.items():
        cols.append(sa.Column(name, column_type(col.type, col.scale, col.max_length)))
    cols += [sa.Column(name, type_) for name, type_ in reference_columns(spec).items()]
    cols.append(sa.Column("_hold", sa.String(10)))
    # No WAL for a table that is thrown away after the load.
    prefixes = ["UNLOGGED"] if db.dialect == "postgresql" else []
    return sa.Table(staging_name(import_id), md, *cols, prefixes=prefixes)


def create_staging(conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int) -> None:
    """(Re)create the import's empty staging table."""
    table = staging_table(db, spec, import_id)
    table.drop(conn, checkfirst=True)
    table.create(conn)


def drop_staging(db: Database, import_id: int) -> None:
    """Drop an import's staging table if it exists (own transaction)."""
    with db.engine.begin() as conn:
        drop_staging_in(conn, db, import_id)


def drop_staging_in(conn: sa.Connection, db: Database, import_id: int) -> None:
    """Drop an import's staging table if it exists, in ``conn``'s transaction."""
    table = qualified_name(conn, db.schema, staging_name(import_id))
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")


def stage_rows(
    conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int, rows: Sequence[ValidRow]
) -> None:
    """Append validated rows to the staging table: COPY on PostgreSQL, inserts on SQLite."""
    if not rows:
        return
    names = data_columns(spec)
    if db.dialect == "postgresql":
        preparer = conn.dialect.identifier_preparer
        target = qualified_name(conn, db.schema or "public", staging_name(import_id))
        column_list = ", ".join(preparer.quote(n) for n in ["_source_row", *names])
        types = ["int8", *(_PG_BINARY_TYPES[spec.columns[n].type] for n in names)]
        order = tuple(names)
        raw: Any = conn.connection.driver_connection
        # Binary COPY: no text formatting of numbers and dates (2-3x faster than text COPY).
        sql = f"COPY {target} ({column_list}) FROM STDIN (FORMAT BINARY)"
        with columnar.quiet_copy_abort(), raw.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types(types)
            write = copy.write_row
            for row in rows:
                write((row.source_row, *row.cells_for(order)))
        return
    table = staging_table(db, spec, import_id)
    records = [{"_source_row": r.source_row, **r.values} for r in rows]
    for start in range(0, len(records), SQLITE_BATCH):
        conn.execute(sa.insert(table), records[start : start + SQLITE_BATCH])


def count_staged(conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int) -> int:
    """Rows in the import's staging table."""
    table = staging_table(db, spec, import_id)
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# Writing the target --------------------------------------------------------------------------


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
    target = target if target is not None else ensure_target(conn, spec)
    stage = staging_table(db, spec, import_id).alias("s")
    tgt = target.alias("t")
    names = written_columns(spec)
    ready = stage.c._hold.is_(None)

    def count_staged_ready() -> int:
        if staged_rows is not None and not spec.references:
            return staged_rows  # nothing is held back without reconciliation
        query = sa.select(sa.func.count()).select_from(stage).where(ready)
        return int(conn.execute(query).scalar_one())

    system: dict[str, Any] = {
        "_import_id": sa.literal(import_id, sa.BigInteger),
        "_source_row": stage.c._source_row,
        "_loaded_at": sa.func.now(),
    }
    if "_business_date" in target.c:
        system["_business_date"] = sa.literal(business_date, sa.Date)

    def insert_from_stage(where: sa.ColumnElement[bool] | None = None) -> int:
        cols = [*names, *system]
        select = sa.select(*(stage.c[n] for n in names), *system.values()).where(ready)
        if where is not None:
            select = select.where(where)
        result = conn.execute(sa.insert(target).from_select(cols, select), execution_options=COUNT)
        return int(result.rowcount)

    def insert_all() -> int:
        return direct(target) if direct is not None else insert_from_stage()

    if strategy is Strategy.APPEND:
        if spec.key:
            staged = count_staged_ready()
            on_key = sa.and_(*(tgt.c[k] == stage.c[k] for k in spec.key))
            created = insert_from_stage(~sa.exists().where(on_key))
            return WriteCounts(created=created, conflicts=staged - created)
        return WriteCounts(created=insert_all())

    if strategy is Strategy.REPLACE_DATE:
        where = target.c._business_date == business_date
        key = row_key_columns(spec, target)
        save_images(conn, db, target, import_id, ImageOperation.DELETE, where, key)
        deleted = int(conn.execute(sa.delete(target).where(where)).rowcount)
        return WriteCounts(created=insert_all(), deleted=deleted)

    # upsert: images of the rows about to change, then update them, then insert new keys
    staged = count_staged_ready()
    on_key = sa.and_(*(target.c[k] == stage.c[k] for k in spec.key))
    others = [n for n in names if n not in spec.key]
    updated = 0
    if others and db.dialect == "postgresql":
        updated = _update_changed_postgresql(conn, db, spec, target, import_id, others, system)
    elif others:
        changed = sa.or_(*(target.c[n].is_distinct_from(stage.c[n]) for n in others))
        differs = sa.exists().where(on_key, changed, ready)
        save_images(conn, db, target, import_id, ImageOperation.UPDATE, differs, spec.key)
        values: dict[str, Any] = {n: stage.c[n] for n in others} | system
        result = conn.execute(sa.update(target).values(values).where(on_key, changed, ready))
        updated = int(result.rowcount)
    on_key_t = sa.and_(*(tgt.c[k] == stage.c[k] for k in spec.key))
    created = insert_from_stage(~sa.exists().where(on_key_t))
    return WriteCounts(created=created, updated=updated, unchanged=staged - created - updated)


def _update_changed_postgresql(
    conn: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    target: sa.Table,
    import_id: int,
    others: Sequence[str],
    system: dict[str, Any],
) -> int:
    """Upsert's update on PostgreSQL: one join finds the rows whose values differ, keeps their
    before-images and updates them (the portable path joins twice).

    Returns:
        Rows updated.
    """
    q = conn.dialect.identifier_preparer.quote
    stage = qualified_name(conn, db.schema or "public", staging_name(import_id))
    images = qualified_name(conn, db.schema, "import_row_images")
    table = q(target.name)
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in spec.key)
    changed = " OR ".join(f"t.{q(c)} IS DISTINCT FROM s.{q(c)}" for c in others)
    params: dict[str, Any] = {"import_id": import_id, "table": target.name, "op": "update"}
    key_parts = []
    for i, k in enumerate(spec.key):
        params[f"k{i}"] = k
        key_parts.append(f"CAST(:k{i} AS text), t.{q(k)}")
    picked = ", ".join(f"s.{q(c)}" for c in others)
    sets = [f"{q(c)} = c.{q(c)}" for c in others]
    sets += ["_import_id = :import_id", "_source_row = c.__hi_source_row", "_loaded_at = now()"]
    if "_business_date" in system:
        params["business_date"] = system["_business_date"].value
        sets.append("_business_date = :business_date")
    sql = f"""
        WITH changed AS MATERIALIZED (
            SELECT t.ctid AS __hi_tid, to_jsonb(t) AS __hi_image,
                   jsonb_build_object({", ".join(key_parts)}) AS __hi_key,
                   s._source_row AS __hi_source_row, {picked}
            FROM {table} AS t JOIN {stage} AS s ON {on}
            WHERE s._hold IS NULL AND ({changed})
        ), saved AS (
            INSERT INTO {images} (import_id, target_table, operation, row_key, row_data, created_at)
            SELECT :import_id, :table, :op, __hi_key, __hi_image, now() FROM changed
        )
        UPDATE {table} AS t SET {", ".join(sets)}
        FROM changed AS c WHERE t.ctid = c.__hi_tid
    """
    return int(conn.execute(sa.text(sql), params).rowcount)


def held_rows(conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int) -> int:
    """Staged rows waiting for a review decision."""
    stage = staging_table(db, spec, import_id)
    query = sa.select(sa.func.count()).select_from(stage).where(stage.c._hold == "review")
    return int(conn.execute(query).scalar_one())


def finish_staging(conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int) -> None:
    """After a load: drop the staging table, or keep only the rows waiting for review."""
    stage = staging_table(db, spec, import_id)
    if not sa.inspect(conn).has_table(stage.name, schema=db.schema):
        return
    # Only reconciliation holds rows back for review.
    if spec.references and held_rows(conn, db, spec, import_id):
        conn.execute(
            sa.delete(stage).where(sa.or_(stage.c._hold.is_(None), stage.c._hold != "review"))
        )
    else:
        stage.drop(conn)


def save_images(
    conn: sa.Connection,
    db: Database,
    target: sa.Table,
    import_id: int,
    operation: ImageOperation,
    where: sa.ColumnElement[bool],
    key: Sequence[str],
) -> int:
    """Copy the rows of ``target`` matching ``where`` to ``import_row_images`` as JSON.

    ``key`` names the columns that identify a row (``row_key_columns``).
    """
    images = db.tables.import_row_images
    key_cols = list(key)
    if db.dialect == "postgresql":
        # The table's name as a whole-row reference: to_jsonb("t") is the row as JSON.
        quoted = conn.dialect.identifier_preparer.quote(target.name)
        record: sa.ColumnElement[Any] = sa.literal_column(quoted)
        row_data: sa.ColumnElement[Any] = sa.func.to_jsonb(record)
        row_key: sa.ColumnElement[Any] = sa.func.jsonb_build_object(
            *(e for k in key_cols for e in (sa.literal(k), target.c[k]))
        )
    else:
        row_data = sa.func.json_object(
            *(e for c in target.columns for e in (sa.literal(c.name), target.c[c.name]))
        )
        row_key = sa.func.json_object(*(e for k in key_cols for e in (sa.literal(k), target.c[k])))
    select = sa.select(
        sa.literal(import_id, sa.BigInteger),
        sa.literal(target.name),
        sa.literal(operation.value),
        row_key,
        row_data,
        sa.func.now(),
    ).where(where)
    result = conn.execute(
        sa.insert(images).from_select(
            ["import_id", "target_table", "operation", "row_key", "row_data", "created_at"], select
        ),
        execution_options=COUNT,
    )
    return int(result.rowcount)


def restore_images(conn: sa.Connection, db: Database, table_name: str, import_id: int) -> int:
    """Insert back every before-image an import kept for ``table_name``.

    Returns:
        Rows restored.
    """
    target = sa.Table(table_name, sa.MetaData(), autoload_with=conn)
    images = db.tables.import_row_images
    preparer = conn.dialect.identifier_preparer
    if db.dialect == "postgresql":
        quoted = preparer.quote(table_name)
        # An identity _row_id must come back with its old value.
        overriding = " OVERRIDING SYSTEM VALUE" if "_row_id" in target.c else ""
        sql = (
            f"INSERT INTO {quoted}{overriding} SELECT r.* FROM "
            f"{preparer.quote(db.schema or 'public')}.import_row_images i "
            f"CROSS JOIN LATERAL jsonb_populate_record(NULL::{quoted}, i.row_data) r "
            "WHERE i.import_id = :import_id AND i.target_table = :table ORDER BY i.image_id"
        )
        result = conn.execute(sa.text(sql), {"import_id": import_id, "table": table_name})
        return int(result.rowcount)
    columns = [c.name for c in target.columns]
    extracted = [
        sa.func.json_extract(images.c.row_data, '$."' + name.replace('"', '\\"') + '"')
        for name in columns
    ]
    select = (
        sa.select(*extracted)
        .where(images.c.import_id == import_id, images.c.target_table == table_name)
        .order_by(images.c.image_id)
    )
    result = conn.execute(sa.insert(target).from_select(columns, select), execution_options=COUNT)
    return int(result.rowcount)


def record_append_conflicts(
    conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int
) -> int:
    """Under ``append`` with a key, record staged rows whose key is already in the table.

    Such rows are skipped by the write (they would violate the key) and stored as failed rows
    of category ``duplicate`` naming the import that loaded the key.

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
        message = (
            f"key {key_text} is already in {spec.target_table} "
            f"(loaded by import {row['_holder']}); the row was skipped"
        )
        records.append(_duplicate_failure(import_id, spec, names, row, message))
    if records:
        conn.execute(sa.insert(db.tables.import_failed_rows), records)
    return len(records)


def index_staging(conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int) -> bool:
    """Index the staged key and give the planner its statistics once staging is complete.

    The index is made unique when the staged keys are (the usual case), which answers the
    question of in-file duplicates at no extra cost (a separate hash aggregate took longer
    than the index), and the upsert inserts new keys in key order along it, which is kinder
    to the target's primary key. Only the key and ``_hold`` are analysed: they are what the
    planner needs for the upsert's joins, and analysing every column cost as much as a fifth
    of a wide file's staging.

    Returns:
        Whether every staged key is distinct (``True`` without a key).
    """
    if not spec.key:
        return True
    stage = staging_table(db, spec, import_id)
    columns = [stage.c[k] for k in spec.key]
    try:
        with conn.begin_nested():
            sa.Index(f"{stage.name}_key", *columns, unique=True).create(conn)
        unique = True
    except sa.exc.IntegrityError:
        sa.Index(f"{stage.name}_key", *columns).create(conn)
        unique = False
    if db.dialect == "postgresql":
        preparer = conn.dialect.identifier_preparer
        names = ", ".join(preparer.quote(k) for k in [*spec.key, "_hold"])
        conn.exec_driver_sql(
            f"ANALYZE {qualified_name(conn, db.schema or 'public', stage.name)} ({names})"
        )
    return unique


def tune_session(conn: sa.Connection, db: Database) -> None:
    """Give this transaction's joins and sorts memory enough to stay off disk (PostgreSQL).

    The server's default ``work_mem`` (4 MB) made the upsert's joins of a 336k-row file spill
    to disk several times over; ``SET LOCAL`` ends with the transaction.
    """
    if db.dialect == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")


def remove_duplicate_keys(
    conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int, batch: int = 5_000
) -> int:
    """Move staged rows whose key appeared earlier in the file to the failed rows.

    Done in the database so that memory does not grow with the number of distinct keys. The
    first occurrence of a key stays; each later one becomes a failed row of category
    ``duplicate`` naming the row where the key was first seen.

    Returns:
        How many staged rows were duplicates.
    """
    if not spec.key:
        return 0
    stage = staging_table(db, spec, import_id)
    keys = [stage.c[k] for k in spec.key]
    firsts = (
        sa.select(*keys, sa.func.min(stage.c._source_row).label("first_row"))
        .group_by(*keys)
        .having(sa.func.count() > 1)
        .subquery("firsts")
    )
    on_key = sa.and_(*(stage.c[k] == firsts.c[k] for k in spec.key))
    query = (
        sa.select(stage, firsts.c.first_row)
        .join(firsts, on_key)
        .where(stage.c._source_row > firsts.c.first_row)
        .order_by(stage.c._source_row)
    )
    names = data_columns(spec)
    failed = db.tables.import_failed_rows
    total = 0
    last = 0
    while True:  # pages by source row, so memory stays bounded however many duplicates
        page = (
            conn.execute(query.where(stage.c._source_row > last).limit(batch)).mappings().fetchall()
        )
        if not page:
            break
        records = []
        for row in page:
            shown = ", ".join(f"{k}={_show(row[k])}" for k in spec.key)
            message = f"duplicate key {shown} (first seen in row {row['first_row']})"
            records.append(_duplicate_failure(import_id, spec, names, row, message))
        conn.execute(sa.insert(failed), records)
        rows = [int(r["_source_row"]) for r in page]
        conn.execute(sa.delete(stage).where(stage.c._source_row.in_(rows)))
        total += len(rows)
        last = rows[-1]
    return total


def _duplicate_failure(
    import_id: int, spec: DatasetSpec, names: Sequence[str], row: Any, message: str
) -> dict[str, Any]:
    """An ``import_failed_rows`` record of category duplicate for a staged row."""

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {
        "import_id": import_id,
        "source_row": row["_source_row"],
        "column_name": spec.key[0],
        "category": "duplicate",
        "message": message,
        "raw_value": text(row[spec.key[0]]),
        "raw_values": {n: text(row[n]) for n in names},
    }


def _show(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")
