"""The staging table of an import: its shape, filling it, indexing it, in-file duplicate keys.

Valid rows are first staged in a table of their own (PostgreSQL: an UNLOGGED table in the
tracking schema filled by COPY; SQLite: batched inserts) and dropped after the load (or kept
with only the rows waiting for review).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.loading.targets import (
    column_type,
    data_columns,
    qualified_name,
    reference_columns,
)
from histimport_pipeline.engine.models import ValidRow
from histimport_pipeline.engine.reading import columnar
from histimport_pipeline.engine.spec import ColumnType, DatasetSpec

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
            records.append(duplicate_failure(import_id, spec, names, row, message))
        conn.execute(sa.insert(failed), records)
        rows = [int(r["_source_row"]) for r in page]
        conn.execute(sa.delete(stage).where(stage.c._source_row.in_(rows)))
        total += len(rows)
        last = rows[-1]
    return total


def duplicate_failure(
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
