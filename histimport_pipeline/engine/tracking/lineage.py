"""Lineage: which imports wrote the rows of a target table, the rows one import wrote, and
where one row came from (the queries behind ``histimport lineage``).

Every loaded row carries ``_import_id`` and ``_source_row``; these queries read them back and
join ``import_history``. Like ``tracking.history`` they return plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError, ImportNotFoundError
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking.history import as_utc, plain_row
from histimport_pipeline.engine.validation import CoercionError, coerce_value


def _target(db: Database, table: str) -> sa.Table:
    """The reflected target table; it must exist and carry ``_import_id``."""
    with db.reader() as conn:
        if not sa.inspect(conn).has_table(table):
            raise HistimportError(f"no table {table!r} in {db.masked_url}")
        reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)
    if "_import_id" not in reflected.c:
        raise HistimportError(
            f"table {table!r} has no _import_id column, so histimport did not load it (a "
            "table that predates histimport gets one with `histimport adopt DATASET --apply`)"
        )
    return reflected


def lineage(db: Database, table: str) -> dict[str, Any]:
    """The imports that contributed rows still present in ``table``.

    Returns:
        ``table``; ``imports``: one dict per import, oldest first: ``import_id``, ``rows``
        (how many of its rows are in the table now), and from ``import_history``
        ``dataset``, ``file_name``, ``started_at``, ``status`` (``None`` when the history
        row is gone); ``total_imports`` and ``total_rows`` (their rows in all);
        ``rows_without_import`` (rows that predate histimport: no ``_import_id``).

    Raises:
        HistimportError: the table does not exist or was not loaded by histimport.
    """
    target = _target(db, table)
    h = db.tables.import_history
    counts = (
        sa.select(target.c._import_id.label("import_id"), sa.func.count().label("rows"))
        .group_by(target.c._import_id)
        .subquery("contributed")
    )
    query = (
        sa.select(
            counts.c.import_id,
            counts.c.rows,
            h.c.dataset,
            h.c.file_name,
            h.c.started_at,
            h.c.status,
        )
        .select_from(counts.outerjoin(h, h.c.import_id == counts.c.import_id))
        .order_by(counts.c.import_id)
    )
    with db.reader() as conn:
        found = [plain_row(r) for r in conn.execute(query).mappings()]
    imports = [r for r in found if r["import_id"] is not None]
    return {
        "table": table,
        "imports": imports,
        "total_imports": len(imports),
        "total_rows": sum(int(r["rows"]) for r in imports),
        "rows_without_import": sum(int(r["rows"]) for r in found if r["import_id"] is None),
    }


def rows_of_import(
    db: Database, import_id: int, table: str | None = None, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """One page of the rows of its target table that still carry ``import_id``, by source row.

    Args:
        db: the target database.
        import_id: the import.
        table: the table the caller expects the rows in (``None``: the import's
            ``target_table``).
        limit, offset: the page to return.

    Returns:
        ``import_id``, ``table``, ``rows`` (each row's columns, ``_source_row`` and the other
        lineage columns included), ``total_count`` (over all pages), ``limit`` and
        ``offset``. Rows a later upsert took over carry that import's id, and a rolled-back
        import has none.

    Raises:
        ImportNotFoundError: no import with that id.
        HistimportError: ``table`` is not the import's target table, or the table does not
            exist.
    """
    h = db.tables.import_history
    with db.reader() as conn:
        target_table = conn.execute(
            sa.select(h.c.target_table).where(h.c.import_id == import_id)
        ).scalar()
    if target_table is None:
        raise ImportNotFoundError(import_id)
    if table is not None and table != target_table:
        raise HistimportError(
            f"import {import_id} wrote table {target_table!r}, not {table!r}: "
            f"run `histimport lineage {target_table} --import {import_id}`"
        )
    target = _target(db, target_table)
    mine = target.c._import_id == import_id
    order = [target.c._source_row, *(c for c in target.primary_key.columns)]
    query = sa.select(target).where(mine).order_by(*order).limit(limit).offset(offset)
    with db.reader() as conn:
        rows = [plain_row(r) for r in conn.execute(query).mappings()]
        total = conn.execute(sa.select(sa.func.count()).select_from(target).where(mine)).scalar()
    return {
        "import_id": import_id,
        "table": target_table,
        "rows": rows,
        "total_count": int(total or 0),
        "limit": limit,
        "offset": offset,
    }


def lineage_of_key(
    db: Database, spec: DatasetSpec, key_values: Mapping[str, str]
) -> dict[str, Any] | None:
    """Which import wrote the row with this natural key, from which file and source row.

    The key's text is converted by the spec column's type (the same coercion the import
    applies), so ``--key 007`` finds a string key ``007`` and ``--key 42`` an integer key 42.

    Args:
        db: the target database.
        spec: the dataset whose ``target_table`` holds the row; its ``key`` names the columns.
        key_values: key column -> value as text; exactly the spec's key columns.

    Returns:
        ``None`` when no row has that key, else ``table``, ``key``, ``import_id``,
        ``source_row``, ``loaded_at`` (all three ``None`` for a row that predates histimport
        in an adopted table), ``row`` (the row's data columns) and ``import`` (the
        import's ``dataset``, ``file_name``, ``file_path``, ``file_sha256``, ``status``,
        ``started_at``, ``triggered_by``, ``user_id``, ``user_email``; ``None`` when the
        history row is gone).

    Raises:
        HistimportError: the dataset has no key, the key columns given are not the spec's, a
            value does not fit its column's type, or the table does not exist.
    """
    if not spec.key:
        raise HistimportError(
            f"dataset {spec.name} has no key, so a row cannot be named by key; "
            f"use `histimport lineage {spec.target_table}` for per-import counts"
        )
    if set(key_values) != set(spec.key):
        raise HistimportError(
            f"table {spec.target_table} is keyed by {', '.join(spec.key)}; "
            f"got {', '.join(key_values) or 'no key'}"
        )
    bound: dict[str, Any] = {}
    for name in spec.key:
        column = spec.columns[name]
        try:
            bound[name] = coerce_value(name, column, key_values[name])
        except CoercionError as exc:
            raise HistimportError(f"key value does not fit its column: {exc.message}") from None
    target = _target(db, spec.target_table)
    h = db.tables.import_history
    query = sa.select(target).where(*(target.c[name] == value for name, value in bound.items()))
    with db.reader() as conn:
        row = conn.execute(query).mappings().first()
        if row is None:
            return None
        info = (
            conn.execute(
                sa.select(
                    h.c.dataset,
                    h.c.file_name,
                    h.c.file_path,
                    h.c.file_sha256,
                    h.c.status,
                    h.c.started_at,
                    h.c.triggered_by,
                    h.c.user_id,
                    h.c.user_email,
                ).where(h.c.import_id == row["_import_id"])
            )
            .mappings()
            .first()
        )
    return {
        "table": spec.target_table,
        "key": dict(key_values),
        "import_id": row["_import_id"],
        "source_row": row["_source_row"],
        "loaded_at": as_utc(row.get("_loaded_at")),
        "row": {k: v for k, v in row.items() if not k.startswith("_")},
        "import": plain_row(info) if info else None,
    }


def key_values(spec: DatasetSpec, items: Sequence[str]) -> dict[str, str]:
    """Key parts as key column -> text: ``["42"]`` for a single-column key,
    ``["a=1", "b=2"]`` for a composite one (the ``NAME=VALUE`` form works for both).

    Raises:
        HistimportError: a part of a composite key has no ``NAME=``, or a name repeats.
    """
    if len(spec.key) == 1 and len(items) == 1:
        name, sep, value = items[0].partition("=")
        if sep and name == spec.key[0]:
            return {name: value}
        return {spec.key[0]: items[0]}
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise HistimportError(
                f"--key {item!r}: table {spec.target_table} is keyed by "
                f"{', '.join(spec.key) or 'nothing'}; give each part as --key NAME=VALUE"
            )
        if name in values:
            raise HistimportError(f"--key {name} is given twice")
        values[name] = value
    return values


def spec_of_table(specs: Mapping[str, DatasetSpec], table: str, where: object) -> DatasetSpec:
    """The dataset spec that writes ``table`` (its key names the table's rows).

    Args:
        where: where the specs were read from, for the message.

    Raises:
        HistimportError: no spec writes that table.
    """
    found = [s for s in specs.values() if s.target_table == table]
    if not found:
        raise HistimportError(
            f"no dataset spec in {where} writes table {table!r}, so its key columns are unknown"
        )
    return found[0]
