"""Before-images: rows an import changes or deletes, kept as JSON in ``import_row_images``, and
putting them back on rollback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.loading.targets import COUNT
from histimport_pipeline.engine.models import ImageOperation


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
            *(e for c in target.columns for e in (sa.literal(c.name), _exact(target.c[c.name])))
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


def _exact(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """SQLite's JSON keeps 15 significant digits of a REAL, which does not restore the same
    double: such a value goes in as its 17-digit text, which the column's affinity turns back
    into exactly that REAL on restore (tables adopted from outside histimport have floats)."""
    return sa.case(
        (sa.func.typeof(column) == "real", sa.func.printf("%!.17g", column)), else_=column
    )


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
        # An identity column (_row_id, or an adopted table's own) comes back with its old
        # value; without identity columns the clause changes nothing.
        sql = (
            f"INSERT INTO {quoted} OVERRIDING SYSTEM VALUE SELECT r.* FROM "
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
