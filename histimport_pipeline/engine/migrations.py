"""Apply and roll back the versioned schema migrations kept under ``sql/``.

Alembic runs them; one upgrade or downgrade, each migration with its version bookkeeping,
commits in one transaction, on PostgreSQL and SQLite alike (SQLite's DDL is transactional
once the driver stops managing transactions, see :mod:`histimport_pipeline.engine.db`).

Every command checks that the schema is up to date first (:func:`ensure_schema`). That check
reads the version table (over DB-API, ``engine.dbapi``) and the migration files without
Alembic or SQLAlchemy, which are imported only to migrate: their import alone costs more
than ``histimport history`` spends on its query.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from histimport_pipeline.engine.errors import HistimportError

if TYPE_CHECKING:
    from alembic.config import Config

    from histimport_pipeline.engine.db import Database
    from histimport_pipeline.engine.dbapi import Reader

VERSION_TABLE = "histimport_schema_version"
#: A migration file's ``revision = "0002"`` or ``down_revision = "0001"`` (or ``None``) line.
_REVISION_LINE = re.compile(
    r"""^(?P<name>revision|down_revision)\s*(?::[^=]*)?=\s*(?:["'](?P<rev>\w+)["']|None)\s*$""",
    re.MULTILINE,
)


def migrations_dir() -> Path:
    """Folder holding the Alembic environment: the wheel's copy, else the repository's."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_sql", package_dir.parent / "sql"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"migrations folder not found next to {package_dir}")


def _config(db: Database | None, sql_schema: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["histimport_db"] = db
    cfg.attributes["histimport_offline_schema"] = sql_schema
    return cfg


#: Key of the PostgreSQL advisory lock that serialises migrations of one database.
_MIGRATION_LOCK = 0x68697374696D7072  # "histimpr"


@contextmanager
def _connected(db: Database) -> Iterator[Config]:
    """A connection in one transaction that holds the migration lock, for Alembic.

    Several processes may migrate a fresh database at once (the first imports into a new
    SQLite file do): the lock (PostgreSQL: a transaction-scoped advisory lock; SQLite: the
    write lock of ``BEGIN IMMEDIATE``) makes them take turns, and Alembic reads the current
    revision only once it holds it, so the later ones find nothing left to do.
    """
    import sqlalchemy as sa

    with db.engine.connect() as conn, conn.begin():
        if db.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        cfg = _config(db)
        cfg.attributes["connection"] = conn
        yield cfg


def upgrade(db: Database, revision: str = "head") -> list[str]:
    """Upgrade the schema to ``revision``; a no-op when it is there already.

    Returns:
        The revisions applied, oldest first.
    """
    from alembic import command

    before = current(db)
    with _connected(db) as cfg:
        command.upgrade(cfg, revision)
    return _between(before, current(db))


def downgrade(db: Database, revision: str = "-1") -> list[str]:
    """Roll the schema back to ``revision`` (``base`` removes every tracking table).

    Returns:
        The revisions rolled back, newest first.
    """
    from alembic import command

    before = current(db)
    with _connected(db) as cfg:
        command.downgrade(cfg, revision)
    return list(reversed(_between(current(db), before)))


def current(db: Database | Reader) -> str | None:
    """The revision the database is at, or ``None`` if no migration was applied.

    Raises:
        HistimportError: the version table holds more than one revision (Alembic would
            refuse to upgrade it as well).
    """
    with db.raw_reader() as s:
        if not s.has_table(VERSION_TABLE):
            return None
        table = s.table(VERSION_TABLE)  # quoted
        revisions = [rev for (rev,) in s.rows(f'SELECT "version_num" FROM {table}')]  # noqa: S608
    if len(revisions) > 1:
        raise HistimportError(
            f"the tracking tables in {db.masked_url} are at several revisions at once "
            f"({', '.join(sorted(revisions))}): {VERSION_TABLE} was changed by hand; leave only "
            "the row of the revision the tables are really at"
        )
    return revisions[0] if revisions else None


def head() -> str:
    """The newest revision in ``sql/versions``: the one no other names as its ``down_revision``.

    Read from the files' ``revision = "..."`` and ``down_revision = "..."`` lines; a file
    that says either differently, or a history with other than one head, is left to Alembic
    (which names the problem).
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        lines = {m["name"]: m["rev"] for m in _REVISION_LINE.finditer(path.read_text("utf-8"))}
        if lines.keys() != {"revision", "down_revision"} or lines["revision"] is None:
            return _alembic_head()
        revisions.add(lines["revision"])
        if lines["down_revision"] is not None:
            parents.add(lines["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else _alembic_head()


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory.from_config(_config(None)).get_current_head()
    if rev is None:
        raise RuntimeError("no migrations found")
    return rev


def ensure_schema(db: Database) -> None:
    """Make sure the tracking tables are migrated to the newest revision.

    SQLite (the embedded default) is migrated on the spot; a PostgreSQL database behind the
    code is an error, since its schema belongs to whoever runs ``histimport db upgrade``.

    Raises:
        HistimportError: a PostgreSQL database is not at the newest revision.
    """
    current_rev, head_rev = current(db), head()
    if current_rev == head_rev:
        return
    if db.dialect == "sqlite":
        upgrade(db)
        return
    raise HistimportError(
        f"the tracking tables in {db.masked_url} are at revision {current_rev or 'none'}, "
        f"this histimport needs {head_rev}: run `histimport db upgrade` (or have your DBA "
        "apply `histimport db sql`)"
    )


def offline_sql(schema: str = "histimport", revision: str = "head") -> str:
    """The PostgreSQL DDL that ``upgrade`` would run, for a DBA to review."""
    from alembic import command

    cfg = _config(None, sql_schema=schema)
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    command.upgrade(cfg, revision, sql=True)
    return buffer.getvalue()


def _between(low: str | None, high: str | None) -> list[str]:
    """Revisions after ``low`` up to and including ``high``, oldest first."""
    if high is None or low == high:
        return []
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config(None))
    revs = [r.revision for r in script.iterate_revisions(high, low or "base")]
    return list(reversed(revs))
