"""table_adoptions: what ``histimport adopt`` added to an existing table, so --undo removes it.

One row per adoption: the dataset and table, who adopted it and when, the DDL that was
applied and the DDL that removes it again, the rows the table held, and (once undone) who
undid it and when.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)
TABLE = "table_adoptions"


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("adoption_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("target_table", sa.String(200), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("adopted_by", sa.String(200)),
        sa.Column("adopted_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("rows_before", sa.BigInteger, nullable=False),
        sa.Column("ddl", Json, nullable=False),
        sa.Column("undo_ddl", Json, nullable=False),
        sa.Column("added", Json, nullable=False),
        sa.Column("undone_by", sa.String(200)),
        sa.Column("undone_at", Timestamp),
        sa.CheckConstraint("status IN ('applied', 'undone')", name="ck_table_adoptions_status"),
        schema=_schema(),
    )
    op.create_index("ix_table_adoptions_target", TABLE, ["target_table"], schema=_schema())


def downgrade() -> None:
    op.drop_index("ix_table_adoptions_target", table_name=TABLE, schema=_schema())
    op.drop_table(TABLE, schema=_schema())
