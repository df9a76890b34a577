"""Reconciliation: learned aliases, and the normalized input key on every match.

Accepting a match in review records an alias (entity + normalized input -> master id) so the
same input matches exactly in later imports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)
MATCHES = "import_reconciliation_matches"
ALIASES = "reconciliation_aliases"


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    schema = _schema()
    # Plain ADD COLUMN: a batch "move and copy" on SQLite would drop the updated_at trigger.
    op.add_column(MATCHES, sa.Column("input_key", sa.Text), schema=schema)
    op.add_column(MATCHES, sa.Column("id_column", sa.String(200)), schema=schema)
    op.create_index(
        "ix_import_reconciliation_matches_import_ref",
        MATCHES,
        ["import_id", "reference_column", "decision"],
        schema=schema,
    )
    match_fk = f"{schema}.{MATCHES}.match_id" if schema else f"{MATCHES}.match_id"
    op.create_table(
        ALIASES,
        sa.Column("alias_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(200), nullable=False),
        sa.Column("input_key", sa.Text, nullable=False),
        sa.Column("input_values", Json, nullable=False),
        sa.Column("entity_id", sa.String(200), nullable=False),
        sa.Column("match_id", BigId, sa.ForeignKey(match_fk, ondelete="SET NULL")),
        sa.Column("created_by", sa.String(200)),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("entity", "input_key", name="uq_reconciliation_aliases_entity_key"),
        schema=schema,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f'CREATE TRIGGER "trg_{ALIASES}_updated_at" BEFORE UPDATE ON "{schema}"."{ALIASES}" '
            f'FOR EACH ROW EXECUTE FUNCTION "{schema}".set_updated_at()'
        )
    else:
        op.execute(
            f'CREATE TRIGGER "trg_{ALIASES}_updated_at" AFTER UPDATE ON "{ALIASES}" '
            "FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at BEGIN "
            f'UPDATE "{ALIASES}" SET updated_at = CURRENT_TIMESTAMP WHERE rowid = NEW.rowid; '
            "END"
        )


def downgrade() -> None:
    schema = _schema()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'DROP TRIGGER IF EXISTS "trg_{ALIASES}_updated_at" ON "{schema}"."{ALIASES}"')
    else:
        op.execute(f'DROP TRIGGER IF EXISTS "trg_{ALIASES}_updated_at"')
    op.drop_table(ALIASES, schema=schema)
    op.drop_index("ix_import_reconciliation_matches_import_ref", MATCHES, schema=schema)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column(MATCHES, "id_column", schema=schema)
        op.drop_column(MATCHES, "input_key", schema=schema)
    else:
        # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
        op.execute(f'ALTER TABLE "{MATCHES}" DROP COLUMN "id_column"')
        op.execute(f'ALTER TABLE "{MATCHES}" DROP COLUMN "input_key"')
