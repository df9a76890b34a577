"""The target table: its declared shape, its columns, creating or widening it under a lock.

Every written row carries ``_import_id``, ``_source_row`` and ``_loaded_at``; the natural key,
if any, is the primary key.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import AdoptionError, SchemaChangeError
from histimport_pipeline.engine.spec import ColumnType, DatasetSpec, Partitioning, Strategy

#: INSERT ... SELECT reports its row count only when asked to (SQLAlchemy 2.x).
COUNT = {"preserve_rowcount": True}


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


def family(type_: sa.types.TypeEngine[Any]) -> str:
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


def target_table(
    spec: DatasetSpec, metadata: sa.MetaData | None = None, *, key_later: bool = False
) -> sa.Table:
    """The target table as the spec declares it (not reflected); with ``key_later``, without
    its primary key (``create_target_keyed_later``).

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
                primary_key=name in spec.key and not key_later,
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


def loads_in_one_pass(db: Database, spec: DatasetSpec) -> bool:
    """Whether ``run_import`` may check the rows and COPY them into the target in one pass.

    True on PostgreSQL for ``append`` datasets without references, with a key or without
    one. Without a key it is ``loads_directly``'s case. With a key, the target's primary key
    does the staging table's work: a key repeated in the file, or already in the table,
    makes the COPY (or, for a new table, the key's index built after it) fail with a unique
    violation (``is_unique_violation``), and the caller then rolls the pass back and stages
    the file as usual, which names every such row. A clean file is written once instead of
    three times (staging, its unique index, the target).
    """
    return db.dialect == "postgresql" and not spec.references and spec.strategy is Strategy.APPEND


def unique_column_sets(inspector: sa.Inspector, table: str) -> list[tuple[set[str], bool]]:
    """The sets of columns ``table`` keeps unique: its primary key, its unique constraints
    and its unique indexes on plain columns (not partial ones, not expressions), each with
    whether it is the primary key (whose columns are never NULL)."""
    primary: list[str | None] = list(inspector.get_pk_constraint(table)["constrained_columns"])
    found: list[tuple[list[str | None], bool]] = [(primary, True)]
    found += [(list(u["column_names"]), False) for u in inspector.get_unique_constraints(table)]
    found += [
        (list(i["column_names"]), False)
        for i in inspector.get_indexes(table)
        if i.get("unique") and not i.get("dialect_options", {}).get("postgresql_where")
    ]
    return [({str(c) for c in cols}, pk) for cols, pk in found if cols and None not in cols]


#: PostgreSQL's SQLSTATE for a unique violation.
UNIQUE_VIOLATION = "23505"


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is (or wraps) PostgreSQL's unique violation: psycopg's own error from
    a COPY, or SQLAlchemy's ``IntegrityError`` around it."""
    candidates = (exc, getattr(exc, "orig", None), exc.__cause__)
    return any(getattr(e, "sqlstate", None) == UNIQUE_VIOLATION for e in candidates)


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
        SchemaChangeError: an existing column has another type, or a new column is required
            or part of the key.
        AdoptionError: the table exists without histimport's system columns (it was made
            outside histimport and not adopted).
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


def create_target_keyed_later(conn: sa.Connection, spec: DatasetSpec) -> sa.Table | None:
    """On PostgreSQL, a keyed target that does not exist yet is created without its primary
    key, which ``add_primary_key`` adds once the rows are in; returns it (else ``None``: the
    table exists, there is no key, or SQLite).

    Building the key's index in one sort once the rows are in took 4.9 s where maintaining
    it row by row added 11.9 s to the INSERT (336,776 flights rows, a busy machine). No one
    else sees the table before the transaction commits, by which time it has its key; a
    concurrent import waits on the same lock as ``ensure_target``'s.
    """
    if conn.dialect.name != "postgresql" or not spec.key:
        return None
    if sa.inspect(conn).has_table(spec.target_table):
        return None
    lock_target(conn, spec.target_table)
    if sa.inspect(conn).has_table(spec.target_table):
        return None
    table = target_table(spec, key_later=True)
    table.create(conn)
    return table


def add_primary_key(conn: sa.Connection, spec: DatasetSpec) -> None:
    """Give a target made by ``create_target_keyed_later`` the primary key ``target_table``
    declares (same columns, same order, the same default name ``<table>_pkey``)."""
    q = conn.dialect.identifier_preparer.quote
    columns = ", ".join(q(c.name) for c in target_table(spec).primary_key.columns)
    conn.exec_driver_sql(f"ALTER TABLE {q(spec.target_table)} ADD PRIMARY KEY ({columns})")


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
            raise AdoptionError(
                spec.target_table,
                f"it exists but has no {system} column, so histimport did not create it. "
                f"See what importing into it takes with `histimport adopt {spec.name}` (and "
                "apply that with --apply), or point target_table at a new table",
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
        have, want = family(existing[column.name]["type"]), family(column.type)
        if have != want:
            problems.append(f"column {column.name!r} is {have} in the table but {want} in the spec")
    if problems:
        raise SchemaChangeError(spec.target_table, "; ".join(problems))
    return to_add


def count_rows(db: Database, spec: DatasetSpec) -> int | None:
    """The rows the dataset's target table holds now (all imports', and any that predate
    histimport), or None when it does not exist yet."""
    with db.reader() as conn:
        if not sa.inspect(conn).has_table(spec.target_table):
            return None
        table = sa.table(spec.target_table)
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
