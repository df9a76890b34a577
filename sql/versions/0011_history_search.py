"""Indexes on import_history for the web service's file-name search, start-time sort and deep
pages.

PostgreSQL: a trigram index (pg_trgm, GIN) on ``file_name`` for the file-name search
(``ILIKE '%...%'``, which no b-tree serves), and ``(started_at DESC NULLS LAST, import_id
DESC)``, the listing's newest-started-first order. SQLite: an index on ``import_id`` alone;
there the table is stored in ``import_id`` order, so a deep page skipped its rows whole, and
this index lets the listing skip 90,000 ids instead (PostgreSQL's primary key is such an
index already). Measured by ``benchmarks/web_service.py`` over 100,000 imports.

pg_trgm ships with PostgreSQL's contrib and is trusted (PostgreSQL 13 and later: whoever may
create objects in the database may add it), but a server may lack it, or the role may not be
allowed to add it: then the upgrade logs a warning and goes on without the trigram index; the
search still works, reading every file name. The extension is never dropped here (other
things may use it), only the index.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

HISTORY = "import_history"
TRIGRAM_INDEX = "ix_import_history_file_name_trgm"
STARTED_INDEX = "ix_import_history_started_at_desc"
#: SQLite only.
ID_INDEX = "ix_import_history_import_id"
#: Why CREATE EXTENSION may fail without anything being wrong with the database: no right to
#: add it, no control file on the server, no schema to put it in.
REFUSED = {
    "42501": "the role may not add extensions to this database",
    "58P01": "the server does not have it installed",
    "3F000": "there is no schema on the search_path to put it in",
}

log = logging.getLogger("histimport.migrations")


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _history() -> str:
    schema = _schema()
    return f"{_quote(schema)}.{_quote(HISTORY)}" if schema else _quote(HISTORY)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(ID_INDEX, HISTORY, ["import_id"], schema=_schema())
        return
    op.create_index(
        STARTED_INDEX,
        HISTORY,
        [sa.text('"started_at" DESC NULLS LAST'), sa.text('"import_id" DESC')],
        schema=_schema(),
    )
    if context.is_offline_mode():
        op.execute(_trigram_index_block())
        return
    ops_schema = _pg_trgm_schema()
    if ops_schema is not None:
        op.get_bind().exec_driver_sql(_create_trigram_index(ops_schema))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(ID_INDEX, table_name=HISTORY, schema=_schema())
        return
    schema = _schema()
    qualified = f"{_quote(schema)}.{_quote(TRIGRAM_INDEX)}" if schema else _quote(TRIGRAM_INDEX)
    op.execute(f"DROP INDEX IF EXISTS {qualified}")
    op.drop_index(STARTED_INDEX, table_name=HISTORY, schema=schema)


def _create_trigram_index(ops_schema: str) -> str:
    return (
        f"CREATE INDEX {_quote(TRIGRAM_INDEX)} ON {_history()} "
        f'USING gin ("file_name" {_quote(ops_schema)}.gin_trgm_ops)'
    )


def _installed_schema(bind: sa.Connection) -> str | None:
    """The schema pg_trgm lives in, or None when it is not in this database."""
    found: str | None = bind.execute(
        sa.text(
            "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
        )
    ).scalar()
    return found


def _pg_trgm_schema() -> str | None:
    """The schema of pg_trgm, added to the database first when it is not there; None (and a
    warning saying what to do) when it cannot be added."""
    bind = op.get_bind()
    found = _installed_schema(bind)
    if found is not None:
        return found
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'pg_trgm'")
    ).scalar()
    if not available:
        _warn("the server does not have it installed (PostgreSQL's contrib package has it)")
        return None
    try:
        # A savepoint: a refused CREATE EXTENSION must not abort the migration's transaction.
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        code = getattr(exc.orig, "sqlstate", None)
        if code not in REFUSED:
            raise
        _warn(f"{REFUSED[code]} ({str(exc.orig).strip().splitlines()[0]})")
        return None
    return _installed_schema(bind)


def _warn(reason: str) -> None:
    log.warning(
        "migration 0011: no trigram index on import_history.file_name: the pg_trgm extension "
        "cannot be added, %s. Searching the history by file name still works, reading every "
        "import's file name. To add the index later, have a database owner or superuser run "
        "`CREATE EXTENSION pg_trgm;` in this database, then: %s",
        reason,
        _create_trigram_index("<schema of pg_trgm>"),
    )


def _trigram_index_block() -> str:
    """What the online upgrade does, as one block of SQL for ``histimport db sql`` (without
    a percent sign: the offline SQL doubles them)."""
    head, tail = _create_trigram_index("@").replace("'", "''").split('"@"')
    refused = " OR ".join(("insufficient_privilege", "undefined_file", "invalid_schema_name"))
    return f"""DO $block$
DECLARE ops_schema text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
        EXCEPTION WHEN {refused} THEN
            RAISE WARNING USING MESSAGE = 'no trigram index on import_history.file_name, '
                || 'searching by file name reads every file name: ' || SQLERRM;
        END;
    END IF;
    SELECT n.nspname INTO ops_schema FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm';
    IF ops_schema IS NOT NULL THEN
        EXECUTE '{head}' || quote_ident(ops_schema) || '{tail}';
    END IF;
END
$block$"""
