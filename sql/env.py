"""Alembic environment for histimport: run from histimport_pipeline.engine.migrations only."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.schema import CreateSchema

from histimport_pipeline.engine.migrations import VERSION_TABLE

config = context.config


def run_offline() -> None:
    schema = config.attributes.get("histimport_offline_schema") or "histimport"
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        transaction_per_migration=True,
        output_buffer=config.output_buffer,
    )
    context.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    db = config.attributes["histimport_db"]
    connection = config.attributes["connection"]
    if db.schema is not None:
        # Inside the caller's transaction (engine.migrations), which holds the migration lock.
        connection.execute(CreateSchema(db.schema, if_not_exists=True))
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=db.schema,
        transaction_per_migration=True,
        # SQLite DDL is transactional with our connection setup; Alembic assumes not.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
