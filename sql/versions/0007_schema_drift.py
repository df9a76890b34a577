"""import_history: the schema an import read (fingerprint, drift, header row) and its spec.

``schema_fingerprint`` is a short SHA-256 of the ordered headers and the mapping used,
``schema_drift`` what changed since the dataset's previous successful import (added, removed
and renamed columns), ``header_present`` whether the file had a header row (``header: false``
datasets read columns by position), and ``spec_used`` the whole dataset spec as JSON.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HISTORY = "import_history"
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("schema_fingerprint", sa.String(64)),
        sa.Column("schema_drift", Json),
        sa.Column("header_present", sa.Boolean),
        sa.Column("spec_used", Json),
    ]


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    # Plain ADD COLUMN: a batch "move and copy" on SQLite would drop the updated_at trigger.
    for column in _columns():
        op.add_column(HISTORY, column, schema=_schema())


def downgrade() -> None:
    for column in reversed(_columns()):
        if op.get_bind().dialect.name == "postgresql":
            op.drop_column(HISTORY, column.name, schema=_schema())
        else:
            # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
            op.execute(f'ALTER TABLE "{HISTORY}" DROP COLUMN "{column.name}"')
