"""import_history.rows_deleted: the rows a ``replace_date`` import deleted before loading.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

HISTORY = "import_history"


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    # Plain ADD COLUMN: a batch "move and copy" on SQLite would drop the updated_at trigger.
    op.add_column(HISTORY, sa.Column("rows_deleted", sa.BigInteger), schema=_schema())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column(HISTORY, "rows_deleted", schema=_schema())
    else:
        # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
        op.execute(f'ALTER TABLE "{HISTORY}" DROP COLUMN "rows_deleted"')
