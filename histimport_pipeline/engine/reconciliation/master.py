"""Master data: the columns of a master table a reference compares, read once per import, and
the aliases learned for its entity in review."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.reconciliation.rules import as_text, normalize
from histimport_pipeline.engine.spec import ReferenceSpec


@dataclass
class MasterData:
    """The columns of a master table that one reference needs, read once per import."""

    table: sa.Table
    ids: list[str]
    raw: dict[str, list[str | None]]
    _norm: dict[tuple[str, bool], list[str | None]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Rows in the master table."""
        return len(self.ids)

    def normalized(self, name: str, strip_accents: bool) -> list[str | None]:
        """The normalized values of one master field (computed once)."""
        key = (name, strip_accents)
        if key not in self._norm:
            self._norm[key] = [normalize(v, strip_accents) for v in self.raw[name]]
        return self._norm[key]


def reflect_master(conn: sa.Connection, ref: ReferenceSpec) -> sa.Table:
    """The reference's master table as it is in the database.

    Raises:
        HistimportError: the table or one of the columns the rules name does not exist.
    """
    try:
        table = sa.Table(ref.entity, sa.MetaData(), autoload_with=conn)
    except sa.exc.NoSuchTableError:
        raise HistimportError(
            f"master table {ref.entity!r} of a reference does not exist in the target "
            "database; create it or fix `entity` in the dataset spec"
        ) from None
    needed = [ref.id_column, *(n for rule in ref.match for f in rule.fields for n in f.field)]
    missing = [n for n in dict.fromkeys(needed) if n not in table.c]
    if missing:
        raise HistimportError(
            f"master table {ref.entity!r} has no column(s) {', '.join(missing)}; its columns "
            f"are {', '.join(table.c.keys())}. Fix `id_column` / `field` in the dataset spec"
        )
    return table


def read_master(conn: sa.Connection, ref: ReferenceSpec) -> MasterData:
    """Read the id column and the fields the reference's rules compare, in one query.

    The rows are put in id order (ids compared as the values they are, text by code
    point), whatever order the database returns them in: the chance rates learned from a
    sample of the master table, and the order of equal candidates, then do not depend on
    its physical row order, and SQLite and PostgreSQL decide alike.
    """
    table = reflect_master(conn, ref)
    names = list(dict.fromkeys(n for rule in ref.match for f in rule.fields for n in f.field))
    query = sa.select(table.c[ref.id_column], *(table.c[n] for n in names))
    rows = [row for row in conn.execute(query) if row[0] is not None]
    # Sorted here, not by ORDER BY: the database would sort text ids by its collation.
    try:
        rows.sort(key=lambda row: row[0])
    except TypeError:
        rows.sort(key=lambda row: str(row[0]))
    ids: list[str] = []
    raw: dict[str, list[str | None]] = {n: [] for n in names}
    for row in rows:
        ids.append(str(row[0]))
        for i, name in enumerate(names, start=1):
            raw[name].append(as_text(row[i]))
    return MasterData(table=table, ids=ids, raw=raw)


def read_aliases(conn: sa.Connection, db: Database, entity: str) -> dict[str, str]:
    """The learned aliases of an entity: normalized input key -> master id."""
    t = db.tables.reconciliation_aliases
    query = sa.select(t.c.input_key, t.c.entity_id).where(t.c.entity == entity)
    return {key: entity_id for key, entity_id in conn.execute(query)}
