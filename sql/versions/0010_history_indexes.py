"""Indexes on import_history for the web service's listing filters and sorts.

``created_at`` (the since/until filter and its count), ``dataset, status`` (the dataset plus
status filter; its count reads the index alone) and ``file_name`` (sorting by file name; on
SQLite the file-name search counts its matches from this index instead of the whole rows).
Measured by ``benchmarks/web_service.py`` over 100,000 imports.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

HISTORY = "import_history"
INDEXES = {
    "ix_import_history_created_at": ["created_at"],
    "ix_import_history_dataset_status": ["dataset", "status"],
    "ix_import_history_file_name": ["file_name"],
}


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, HISTORY, columns, schema=_schema())


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name=HISTORY, schema=_schema())
