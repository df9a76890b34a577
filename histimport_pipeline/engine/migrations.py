"""Apply and roll back the versioned schema migrations kept under ``sql/``.

Alembic runs them; one upgrade or downgrade, each migration with its version bookkeeping,
commits in one transaction, on PostgreSQL and SQLite alike (SQLite's DDL is transactional
once the driver stops managing transactions, see :mod:`histimport_pipeline.engine.db`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from histimport_pipeline.engine.db import Database

VERSION_TABLE = "histimport_schema_version"


def migrations_dir() -> Path:
    """Folder holding the Alembic environment: the wheel's copy, else the repository's."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_sql", package_dir.parent / "sql"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"migrations folder not found next to {package_dir}")


def _config(db: Database | None, sql_schema: str | None = None) -> Config:
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
    before = current(db)
    with _connected(db) as cfg:
        command.upgrade(cfg, revision)
    return _between(before, current(db))


def downgrade(db: Database, revision: str = "-1") -> list[str]:
    """Roll the schema back to ``revision`` (``base`` removes every tracking table).

    Returns:
        The revisions rolled back, newest first.
    """
    before = current(db)
    with _connected(db) as cfg:
        command.downgrade(cfg, revision)
    return list(reversed(_between(current(db), before)))


def current(db: Database) -> str | None:
    """The revision the database is at, or ``None`` if no migration was applied."""
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "version_table_schema": db.schema}
        )
        return ctx.get_current_revision()


def head() -> str:
    """The newest revision in ``sql/versions``."""
    rev = ScriptDirectory.from_config(_config(None)).get_current_head()
    if rev is None:
        raise RuntimeError("no migrations found")
    return rev


def offline_sql(schema: str = "histimport", revision: str = "head") -> str:
    """The PostgreSQL DDL that ``upgrade`` would run, for a DBA to review."""
    cfg = _config(None, sql_schema=schema)
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    command.upgrade(cfg, revision, sql=True)
    return buffer.getvalue()


def _between(low: str | None, high: str | None) -> list[str]:
    """Revisions after ``low`` up to and including ``high``, oldest first."""
    if high is None or low == high:
        return []
    script = ScriptDirectory.from_config(_config(None))
    revs = [r.revision for r in script.iterate_revisions(high, low or "base")]
    return list(reversed(revs))
