"""import_history.corrects_import_id and superseded_by: a corrected file supersedes a failure.

A file dropped under the name of an import that failed or was rejected (or, for a daily
dataset, for the same business date) records the import it corrects; once it loads, the
failed import records the one that superseded it, so it stops being the dataset's open
failure while its history stays.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

HISTORY = "import_history"
COLUMNS = ("corrects_import_id", "superseded_by")


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    # Plain ADD COLUMN: a batch "move and copy" on SQLite would drop the updated_at trigger.
    # No foreign key: SQLite cannot add one to an existing table in place, and rollback and
    # cleanup already keep import ids consistent.
    for name in COLUMNS:
        op.add_column(HISTORY, sa.Column(name, sa.BigInteger), schema=_schema())
    op.create_index("ix_import_history_corrects", HISTORY, ["corrects_import_id"], schema=_schema())


def downgrade() -> None:
    op.drop_index("ix_import_history_corrects", table_name=HISTORY, schema=_schema())
    for name in COLUMNS:
        if op.get_bind().dialect.name == "postgresql":
            op.drop_column(HISTORY, name, schema=_schema())
        else:
            # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
            op.execute(f'ALTER TABLE "{HISTORY}" DROP COLUMN "{name}"')
