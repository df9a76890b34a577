"""Master rows created by the policy ``create``: creating them, finding the imports that use
them, and dropping them when their import is rolled back, rejected or reconciled again."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.models import ImportStatus, MatchDecision
from histimport_pipeline.engine.spec import ReferenceSpec


def create_master_row(
    conn: sa.Connection, ref: ReferenceSpec, table: sa.Table, values: Mapping[str, Any]
) -> str:
    """Insert a new master row from the source values; returns its id as text."""
    row: dict[str, Any] = {}
    for source, name in ref.field_of_source.items():
        if values.get(source) is not None:
            row[name] = values[source]
    id_col = table.c[ref.id_column]
    if ref.id_type == "string" and id_col.server_default is None:
        row[ref.id_column] = uuid.uuid4().hex
    new_id = conn.execute(sa.insert(table).values(row).returning(id_col)).scalar_one()
    return str(new_id)


def master_row_counts(conn: sa.Connection, db: Database, import_id: int) -> dict[str, int]:
    """The import's ``master_rows_created`` and ``master_rows_linked``, from its matches.

    Created: the distinct master rows its reconciliation (or review) inserted under the
    policy ``create``. Linked: the distinct master rows that already existed and that its
    values were matched to, by a rule or accepted in review.
    """
    m = db.tables.import_reconciliation_matches

    def distinct_masters(*decisions: MatchDecision) -> int:
        rows = (
            sa.select(m.c.entity, m.c.matched_id)
            .distinct()
            .where(
                m.c.import_id == import_id,
                m.c.matched_id.is_not(None),
                m.c.decision.in_([d.value for d in decisions]),
            )
            .subquery()
        )
        return int(conn.execute(sa.select(sa.func.count()).select_from(rows)).scalar_one())

    return {
        "master_rows_created": distinct_masters(MatchDecision.CREATED),
        "master_rows_linked": distinct_masters(MatchDecision.AUTO_ACCEPTED, MatchDecision.ACCEPTED),
    }


def _created_masters(
    conn: sa.Connection, db: Database, import_id: int
) -> dict[tuple[str, str], list[str]]:
    """(entity, id column) -> ids of the master rows ``import_id`` created, as text."""
    m = db.tables.import_reconciliation_matches
    rows = conn.execute(
        sa.select(m.c.entity, m.c.id_column, m.c.matched_id).where(
            m.c.import_id == import_id,
            m.c.decision == MatchDecision.CREATED.value,
            m.c.matched_id.is_not(None),
        )
    )
    created: dict[tuple[str, str], list[str]] = {}
    for entity, id_column, matched_id in rows:
        created.setdefault((entity, id_column or "id"), []).append(matched_id)
    return created


def imports_using_created_masters(conn: sa.Connection, db: Database, import_id: int) -> list[int]:
    """Other loaded imports whose rows point at master rows that ``import_id`` created.

    Rolling ``import_id`` back deletes those master rows, so these imports depend on it.
    """
    created = _created_masters(conn, db, import_id)
    if not created:
        return []
    m, h = db.tables.import_reconciliation_matches, db.tables.import_history
    found: set[int] = set()
    for (entity, _), ids in created.items():
        rows = conn.execute(
            sa.select(m.c.import_id)
            .distinct()
            .join(h, h.c.import_id == m.c.import_id)
            .where(
                m.c.import_id != import_id,
                m.c.entity == entity,
                m.c.matched_id.in_(ids),
                h.c.status.in_([ImportStatus.SUCCESS.value, ImportStatus.PARTIAL.value]),
            )
        )
        found.update(r[0] for r in rows)
    return sorted(found)


def drop_created_masters(conn: sa.Connection, db: Database, import_id: int) -> int:
    """Delete the master rows that ``import_id`` created (policy ``create``), in ``conn``'s
    transaction, with any alias learned for them since. Returns how many rows went.

    Used when the import is rolled back or rejected, and when its reconcile step runs again.

    Raises:
        HistimportError: a created row is still referenced by a foreign key elsewhere.
    """
    deleted = 0
    aliases = db.tables.reconciliation_aliases
    for (entity, id_column), ids in _created_masters(conn, db, import_id).items():
        if not sa.inspect(conn).has_table(entity):
            continue
        table = sa.Table(entity, sa.MetaData(), autoload_with=conn)
        column = table.c[id_column]
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            python_type = str
        keys = [python_type(i) if python_type is int else i for i in ids]
        try:
            with conn.begin_nested():
                deleted += int(conn.execute(sa.delete(table).where(column.in_(keys))).rowcount)
        except sa.exc.IntegrityError as exc:
            raise HistimportError(
                f"import {import_id} created {len(ids)} row(s) in {entity} that other tables "
                f"still reference ({exc.orig}); remove those references first, then try again"
            ) from None
        conn.execute(
            sa.delete(aliases).where(aliases.c.entity == entity, aliases.c.entity_id.in_(ids))
        )
    return deleted
