"""The adoption plan: how an existing table differs from its dataset spec, and the DDL that lets
histimport write it (and the DDL that takes that away again).

Adoption only adds: nullable lineage columns (rows that predate histimport keep NULL), a unique
index on the spec's key, an index on ``_import_id``, a ``last_updated`` column and the trigger
that keeps it. It never retypes or rewrites a column of the user's data: where the spec and the
table disagree, the plan lists a problem that says what to change in the spec (or the table).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import AdoptionError
from histimport_pipeline.engine.loading.targets import (
    column_type,
    family,
    reference_columns,
    unique_column_sets,
)
from histimport_pipeline.engine.models import AdoptionStatus
from histimport_pipeline.engine.spec import SYSTEM_COLUMNS, ColumnType, DatasetSpec, Partitioning

#: The column the trigger keeps current on every UPDATE.
LAST_UPDATED = "last_updated"
#: How many repeated key values a refusal lists.
SHOWN_REPEATS = 10
#: The spec type to write for a table column of each type family.
_SPEC_TYPE_OF = {
    "integer": "integer",
    "numeric": "decimal",
    "text": "string",
    "date": "date",
    "timestamp": "timestamp",
    "boolean": "boolean",
}


@dataclass(frozen=True)
class AdoptionPlan:
    """What adopting ``table`` for ``dataset`` takes.

    ``statements`` is the DDL to apply, in order; ``undo`` the DDL that removes it, in order;
    ``added`` what it adds, by kind (``columns``, ``indexes``, ``triggers``, ``functions``).
    ``problems`` stop the adoption until the spec or table changes; ``notes`` do not.
    ``adoption_id`` is set when the table is adopted already (then there is nothing to do).
    """

    dataset: str
    table: str
    dialect: str
    rows: int
    statements: tuple[str, ...] = ()
    undo: tuple[str, ...] = ()
    added: dict[str, list[str]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    adoption_id: int | None = None

    @property
    def ready(self) -> bool:
        """Whether ``--apply`` would change the table."""
        return not self.problems and bool(self.statements) and self.adoption_id is None


def plan_adoption(db: Database, spec: DatasetSpec) -> AdoptionPlan:
    """Compare the dataset's existing ``target_table`` with the spec and plan the DDL.

    Reads only (the catalog, a row count and, with a key, a GROUP BY over the key).

    Raises:
        AdoptionError: the table does not exist, or carries histimport's lineage columns
            without a record of an adoption (histimport made it: nothing to adopt).
    """
    with db.reader() as conn:
        return plan_in(conn, db, spec)


def plan_in(conn: sa.Connection, db: Database, spec: DatasetSpec) -> AdoptionPlan:
    """:func:`plan_adoption` on ``conn`` (adoption plans again under its lock)."""
    name = spec.target_table
    inspector = sa.inspect(conn)
    if not inspector.has_table(name):
        raise AdoptionError(
            name,
            f"does not exist, so there is nothing to adopt; the first import of {spec.name} "
            "creates it",
        )
    table = sa.Table(name, sa.MetaData(), autoload_with=conn)
    rows = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    record = current_adoption(conn, db, name)
    if record is not None:
        return AdoptionPlan(spec.name, name, db.dialect, rows, adoption_id=record["adoption_id"])
    if "_import_id" in table.c:
        raise AdoptionError(
            name,
            "already carries histimport's _import_id column and was not adopted, so "
            "histimport made it: imports write it as it is",
        )
    columns: dict[str, dict[str, Any]] = {c["name"]: dict(c) for c in inspector.get_columns(name)}
    problems = _spec_problems(spec, columns, db.dialect)
    problems += _unfilled_columns(spec, inspector, name, columns)
    problems += [
        f"the table has a column {c!r} of its own, a name histimport writes: rename it"
        for c in SYSTEM_COLUMNS
        if c in columns
    ]
    ddl = _Ddl(conn, name)
    notes: list[str] = []
    if spec.key:
        if _key_is_unique(inspector, name, spec.key):
            notes.append(f"key ({', '.join(spec.key)}) is unique in the table already")
        else:
            problems += _repeated_keys(conn, table, spec.key)
            ddl.unique_index(spec.key)
    ddl.lineage(spec.partitioning is Partitioning.DAILY)
    problems += ddl.last_updated(columns.get(LAST_UPDATED), db.dialect, _row_of(conn, name))
    return AdoptionPlan(
        dataset=spec.name,
        table=name,
        dialect=db.dialect,
        rows=rows,
        statements=tuple(ddl.statements),
        undo=tuple(reversed(ddl.undo)),
        added=ddl.added,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def current_adoption(conn: sa.Connection, db: Database, table: str) -> dict[str, Any] | None:
    """The adoption of ``table`` that stands (not undone), as a dict, or ``None``."""
    t = db.tables.table_adoptions
    row = (
        conn.execute(
            sa.select(t).where(
                t.c.target_table == table, t.c.status == AdoptionStatus.APPLIED.value
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def _spec_problems(spec: DatasetSpec, columns: dict[str, Any], dialect: str) -> list[str]:
    """Per spec column: missing from the table, another type, or optional where the table
    requires a value. The spec adapts to the table, never the reverse."""
    problems = []
    wanted: dict[str, sa.types.TypeEngine[Any]] = {
        name: column_type(col.type, col.scale, col.max_length) for name, col in spec.columns.items()
    }
    wanted |= reference_columns(spec)
    for name, want in wanted.items():
        have = columns.get(name)
        if have is None:
            problems.append(
                f"column {name!r} of the spec is not in the table: add it to the table "
                "(ALTER TABLE ... ADD COLUMN) or remove it from the spec"
            )
            continue
        have_family, want_family = family(have["type"]), family(want)
        if have_family != want_family:
            problems.append(_type_problem(name, have["type"], have_family, dialect))
            continue
        col = spec.columns.get(name)
        if col is None:
            continue
        problems += _narrower(name, col.type, col.max_length, col.scale, have["type"], dialect)
        if not have["nullable"] and not (col.required or name in spec.key):
            problems.append(
                f"column {name!r} is NOT NULL in the table but optional in the spec: set "
                "`required: true` on it, so a row without a value fails validation, not the load"
            )
    return problems


def _type_problem(name: str, have: Any, have_family: str, dialect: str) -> str:
    shown = have.compile(dialect=_dialect(dialect))
    spec_type = _SPEC_TYPE_OF.get(have_family)
    if spec_type is None:
        return (
            f"column {name!r} is {shown} in the table, which no spec type maps onto: leave it "
            "out of the spec (it keeps its values)"
        )
    return (
        f"column {name!r} is {shown} in the table but another type in the spec: change the "
        f"spec's type to `{spec_type}` (adoption never retypes a column)"
    )


def _narrower(
    name: str,
    spec_type: ColumnType,
    max_length: int | None,
    scale: int,
    have: Any,
    dialect: str,
) -> list[str]:
    """A table column that keeps less than the spec lets through (PostgreSQL enforces both)."""
    if dialect != "postgresql":
        return []
    length = getattr(have, "length", None)
    if isinstance(have, sa.String) and length and (max_length is None or max_length > length):
        return [
            f"column {name!r} holds at most {length} characters in the table: set "
            f"`max_length: {length}` in the spec, so longer values fail validation per row"
        ]
    table_scale = getattr(have, "scale", None)
    decimal = spec_type is ColumnType.DECIMAL and not isinstance(have, sa.Float)
    if decimal and table_scale is not None and scale > table_scale:
        return [
            f"column {name!r} keeps {table_scale} decimal place(s) in the table: set "
            f"`scale: {table_scale}` in the spec so values are not rounded on load"
        ]
    return []


def _unfilled_columns(
    spec: DatasetSpec, inspector: sa.Inspector, name: str, columns: dict[str, Any]
) -> list[str]:
    """Table columns the spec does not write that require a value and have no default: every
    insert of an import would fail on them."""
    written = {*spec.columns, *spec.references}
    pk = inspector.get_pk_constraint(name).get("constrained_columns") or []
    problems = []
    for column in columns.values():
        cname = column["name"]
        if cname in written or column["nullable"] or column.get("default") is not None:
            continue
        if column.get("identity") or column.get("computed") or column.get("autoincrement") is True:
            continue
        if pk == [cname] and str(column["type"]).upper() == "INTEGER":
            continue  # SQLite's INTEGER PRIMARY KEY is the rowid: it fills itself
        problems.append(
            f"column {cname!r} is NOT NULL without a default and the spec does not fill it: add "
            f"it to the spec's columns, or give it a default (ALTER TABLE {name} ALTER COLUMN "
            f"{cname} SET DEFAULT ...)"
        )
    return problems


def _key_is_unique(inspector: sa.Inspector, name: str, key: tuple[str, ...]) -> bool:
    """Whether a primary key, unique constraint or unique index on (a part of) the key exists."""
    return any(cols <= set(key) for cols, _ in unique_column_sets(inspector, name))


def _repeated_keys(conn: sa.Connection, table: sa.Table, key: tuple[str, ...]) -> list[str]:
    """A problem listing key values that existing rows repeat (a unique index would fail)."""
    cols = [table.c[k] for k in key]
    repeats = (
        sa.select(*cols, sa.func.count().label("n"))
        .where(*(c.is_not(None) for c in cols))
        .group_by(*cols)
        .having(sa.func.count() > 1)
    )
    total = conn.execute(sa.select(sa.func.count()).select_from(repeats.subquery())).scalar_one()
    if not total:
        return []
    shown = conn.execute(repeats.order_by(sa.desc("n"), *cols).limit(SHOWN_REPEATS)).all()
    listed = ", ".join(
        ", ".join(f"{k}={v!s}" for k, v in zip(key, r[:-1], strict=True)) + f" ({r[-1]} rows)"
        for r in shown
    )
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    return [
        f"the key ({', '.join(key)}) repeats in {total} value(s) of the existing rows: "
        f"{listed}{more}; merge or delete the repeated rows, or choose a key that is unique"
    ]


def _row_of(conn: sa.Connection, name: str) -> list[str]:
    """On SQLite, the columns that name the updated row in the trigger: ``rowid``, or the
    primary key of a table ``WITHOUT ROWID`` (which has one, and no rowid)."""
    if conn.dialect.name != "sqlite":
        return []
    sql = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": name},
    ).scalar_one()
    if "WITHOUT ROWID" not in " ".join(str(sql).upper().split()):
        return ["rowid"]
    return list(sa.inspect(conn).get_pk_constraint(name)["constrained_columns"])


def _dialect(name: str) -> sa.Dialect:
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.dialect() if name == "postgresql" else sqlite.dialect()


def object_name(prefix: str, table: str, suffix: str) -> str:
    """An index, trigger or function name within PostgreSQL's 63 characters, still unique."""
    name = f"{prefix}_{table}_{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{prefix}_{table[: 63 - len(prefix) - len(suffix) - 11]}_{digest}_{suffix}"


class _Ddl:
    """Builds the adoption's statements and their undo, quoted by the connection's dialect."""

    def __init__(self, conn: sa.Connection, table: str) -> None:
        self.q = conn.dialect.identifier_preparer.quote
        self.dialect = conn.dialect
        self.table = table
        self.t = self.q(table)
        self.statements: list[str] = []
        self.undo: list[str] = []
        self.added: dict[str, list[str]] = {
            "columns": [],
            "indexes": [],
            "triggers": [],
            "functions": [],
        }

    def _type(self, type_: sa.types.TypeEngine[Any]) -> str:
        return str(type_.compile(dialect=self.dialect))

    def add_column(self, name: str, type_: sa.types.TypeEngine[Any]) -> None:
        ddl_type = self._type(type_)
        self.statements.append(f"ALTER TABLE {self.t} ADD COLUMN {self.q(name)} {ddl_type}")
        self.undo.append(f"ALTER TABLE {self.t} DROP COLUMN {self.q(name)}")
        self.added["columns"].append(name)

    def index(
        self, suffix: str, columns: tuple[str, ...], unique: bool = False, where: str = ""
    ) -> None:
        name = object_name("ux" if unique else "ix", self.table, suffix)
        cols = ", ".join(self.q(c) for c in columns)
        kind = "UNIQUE INDEX" if unique else "INDEX"
        self.statements.append(f"CREATE {kind} {self.q(name)} ON {self.t} ({cols}){where}")
        self.undo.append(f"DROP INDEX {self.q(name)}")
        self.added["indexes"].append(name)

    def unique_index(self, key: tuple[str, ...]) -> None:
        # First: it takes a SHARE lock, under which readers still read (see apply).
        self.index("key", key, unique=True)

    def lineage(self, daily: bool) -> None:
        self.add_column("_import_id", sa.BigInteger())
        self.add_column("_source_row", sa.BigInteger())
        self.add_column("_loaded_at", sa.DateTime())
        if self.dialect.name == "postgresql":
            # For the direct COPY, which leaves it to the default. Set after the column is
            # added, so the rows already there keep NULL (ADD ... DEFAULT would fill them).
            self.statements.append(
                f"ALTER TABLE {self.t} ALTER COLUMN {self.q('_loaded_at')} SET DEFAULT now()"
            )
        # Partial: the rows that predate histimport (NULL) are not indexed, which keeps the
        # build, under the lock readers wait for, to one scan; `_import_id = n` still uses it.
        if daily:
            self.add_column("_business_date", sa.Date())
            self.index(
                "_business_date", ("_business_date",), where=self._imported("_business_date")
            )
        self.index("_import_id", ("_import_id",), where=self._imported("_import_id"))

    def _imported(self, column: str) -> str:
        return f" WHERE {self.q(column)} IS NOT NULL"

    def last_updated(
        self, existing: dict[str, Any] | None, dialect: str, row_of: list[str]
    ) -> list[str]:
        """The ``last_updated`` column (unless the table has one) and its trigger; ``row_of``
        (SQLite) names the updated row."""
        if existing is None:
            self.add_column(LAST_UPDATED, sa.DateTime())
        elif family(existing["type"]) != "timestamp":
            return [
                f"column {LAST_UPDATED!r} of the table is not a timestamp, so adoption cannot "
                "keep it with a trigger: rename it"
            ]
        trigger = object_name("histimport", self.table, LAST_UPDATED)
        col, q = self.q(LAST_UPDATED), self.q
        if dialect == "postgresql":
            self.statements.append(
                f"CREATE FUNCTION {q(trigger)}() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN NEW.{col} := now(); RETURN NEW; END $$"
            )
            self.statements.append(
                f"CREATE TRIGGER {q(trigger)} BEFORE UPDATE ON {self.t} "
                f"FOR EACH ROW EXECUTE FUNCTION {q(trigger)}()"
            )
            self.undo += [f"DROP FUNCTION {q(trigger)}()", f"DROP TRIGGER {q(trigger)} ON {self.t}"]
            self.added["functions"].append(trigger)
        else:
            # An explicit new value wins; recursive triggers are off, so no loop.
            row = " AND ".join(f"{q(c)} = NEW.{q(c)}" for c in row_of)
            body = f"UPDATE {self.t} SET {col} = CURRENT_TIMESTAMP WHERE {row}"  # noqa: S608
            self.statements.append(
                f"CREATE TRIGGER {q(trigger)} AFTER UPDATE ON {self.t} FOR EACH ROW "
                f"WHEN NEW.{col} IS OLD.{col} BEGIN {body}; END"
            )
            self.undo.append(f"DROP TRIGGER {q(trigger)}")
        self.added["triggers"].append(trigger)
        return []
