"""import_history live progress: rows_done, rows_expected, progress_percent, progress_updated_at.

Written while an import runs, in short transactions of their own (see
``engine.tracking.progress``), so that ``histimport show --watch``, ``history`` and the HTTP API
can follow it, and liveness can tell a long load from a dead one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

HISTORY = "import_history"
COLUMNS = ("rows_done", "rows_expected", "progress_percent", "progress_updated_at")


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    # Plain ADD COLUMN: a batch "move and copy" on SQLite would drop the updated_at trigger.
    op.add_column(HISTORY, sa.Column("rows_done", sa.BigInteger), schema=_schema())
    op.add_column(HISTORY, sa.Column("rows_expected", sa.BigInteger), schema=_schema())
    op.add_column(HISTORY, sa.Column("progress_percent", sa.Float), schema=_schema())
    op.add_column(
        HISTORY, sa.Column("progress_updated_at", sa.DateTime(timezone=True)), schema=_schema()
    )


def downgrade() -> None:
    for name in reversed(COLUMNS):
        if op.get_bind().dialect.name == "postgresql":
            op.drop_column(HISTORY, name, schema=_schema())
        else:
            # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
            op.execute(f'ALTER TABLE "{HISTORY}" DROP COLUMN "{name}"')
