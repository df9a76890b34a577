"""Alembic environment for histimport: run from histimport_pipeline.engine.migrations only."""

from __future__ import annotations

from alembic import context
from sqlalchemy import inspect, text
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
    # Inside the caller's transaction (engine.migrations), which holds the migration lock.
    # A schema made by an administrator is used as it is: CREATE SCHEMA asks for the right to
    # create in the database even with IF NOT EXISTS, which the role then need not have.
    if db.schema is not None and not inspect(connection).has_schema(db.schema):
        connection.execute(CreateSchema(db.schema))
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
