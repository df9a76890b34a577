"""import_history.error_file_path and archived_at: the error file written for an import with
failed rows, and when the retention cleanup archived the import.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

HISTORY = "import_history"
COLUMNS = ("error_file_path", "archived_at")


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    # Plain ADD COLUMN: a batch "move and copy" on SQLite would drop the updated_at trigger.
    op.add_column(HISTORY, sa.Column("error_file_path", sa.Text), schema=_schema())
    op.add_column(HISTORY, sa.Column("archived_at", sa.DateTime(timezone=True)), schema=_schema())


def downgrade() -> None:
    for column in reversed(COLUMNS):
        if op.get_bind().dialect.name == "postgresql":
            op.drop_column(HISTORY, column, schema=_schema())
        else:
            # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
            op.execute(f'ALTER TABLE "{HISTORY}" DROP COLUMN "{column}"')
