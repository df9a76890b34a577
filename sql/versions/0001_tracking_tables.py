"""Tracking tables: import history, processed files, processing status, failed rows,
reconciliation matches, audit trail and row before-images.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

STATUSES = (
    "pending",
    "running",
    "success",
    "partial",
    "failed",
    "rejected",
    "duplicate",
    "rolled_back",
)
PHASES = ("PARSE", "VALIDATE", "RECONCILE", "CONFIRM", "LOAD", "COMPLETE")
FILE_STATUSES = ("processing", "imported", "partial", "failed", "rejected", "rolled_back")
IMAGE_OPERATIONS = ("update", "delete")
UPDATED_AT_TABLES = (
    "import_history",
    "processed_files",
    "processing_status",
    "import_reconciliation_matches",
)


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def _fk(schema: str | None) -> str:
    return f"{schema}.import_history.import_id" if schema else "import_history.import_id"


def _check(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=name)


def _created_at() -> sa.Column:
    return sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now())


def _updated_at() -> sa.Column:
    return sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    schema = _schema()
    fk = _fk(schema)

    op.create_table(
        "import_history",
        sa.Column("import_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("target_table", sa.String(200), nullable=False),
        sa.Column("import_type", sa.String(20), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("partition_key", sa.String(300)),
        sa.Column("business_date", sa.Date),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("file_name", sa.String(500)),
        sa.Column("file_path", sa.Text),
        sa.Column("file_size", sa.BigInteger),
        sa.Column("file_type", sa.String(20)),
        sa.Column("file_sha256", sa.String(64)),
        sa.Column("file_metadata", Json),
        sa.Column("column_mapping", Json),
        sa.Column("strategy", sa.String(20)),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("phase", sa.String(20)),
        sa.Column("error_message", sa.Text),
        sa.Column("warnings", Json),
        sa.Column("error_summary", Json),
        sa.Column("rows_in_file", sa.BigInteger),
        sa.Column("rows_processed", sa.BigInteger),
        sa.Column("rows_created", sa.BigInteger),
        sa.Column("rows_updated", sa.BigInteger),
        sa.Column("rows_unchanged", sa.BigInteger),
        sa.Column("rows_failed", sa.BigInteger),
        sa.Column("rows_duplicate", sa.BigInteger),
        sa.Column("rows_review", sa.BigInteger),
        sa.Column("phase_seconds", Json),
        sa.Column("total_seconds", sa.Float),
        sa.Column("forced", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("retry_of", BigId, sa.ForeignKey(fk, ondelete="SET NULL")),
        sa.Column("triggered_by", sa.String(200)),
        sa.Column("worker", sa.String(200)),
        sa.Column("heartbeat_at", Timestamp),
        _created_at(),
        sa.Column("started_at", Timestamp),
        sa.Column("finished_at", Timestamp),
        _updated_at(),
        _check("status", STATUSES, "ck_import_history_status"),
        _check("phase", PHASES, "ck_import_history_phase"),
        schema=schema,
    )
    for name, cols in (
        ("ix_import_history_dataset_started", ["dataset", "started_at"]),
        ("ix_import_history_status", ["status"]),
        ("ix_import_history_started_at", ["started_at"]),
        ("ix_import_history_file_sha256", ["file_sha256"]),
        ("ix_import_history_partition", ["dataset", "partition_key"]),
        ("ix_import_history_target_table", ["target_table"]),
    ):
        op.create_index(name, "import_history", cols, schema=schema)

    op.create_table(
        "processed_files",
        sa.Column("file_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(500), nullable=False),
        sa.Column("file_size", sa.BigInteger),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("first_import_id", BigId, sa.ForeignKey(fk, ondelete="SET NULL")),
        sa.Column("last_import_id", BigId, sa.ForeignKey(fk, ondelete="SET NULL")),
        sa.Column("times_seen", sa.Integer, nullable=False, server_default="1"),
        sa.Column("first_seen_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("last_seen_at", Timestamp, nullable=False, server_default=sa.func.now()),
        _updated_at(),
        sa.UniqueConstraint("dataset", "sha256", name="uq_processed_files_dataset_sha256"),
        _check("status", FILE_STATUSES, "ck_processed_files_status"),
        schema=schema,
    )
    op.create_index("ix_processed_files_sha256", "processed_files", ["sha256"], schema=schema)
    op.create_index(
        "ix_processed_files_last_import_id", "processed_files", ["last_import_id"], schema=schema
    )

    op.create_table(
        "processing_status",
        sa.Column("process_name", sa.String(200), primary_key=True),
        sa.Column("process_type", sa.String(40), nullable=False),
        sa.Column("dataset", sa.String(200)),
        sa.Column("state", sa.String(40), nullable=False, server_default="idle"),
        sa.Column("last_run_at", Timestamp),
        sa.Column("last_run_date", sa.Date),
        sa.Column("last_success_at", Timestamp),
        sa.Column("last_success_date", sa.Date),
        sa.Column("next_scheduled_run", Timestamp),
        sa.Column("configuration", Json),
        sa.Column("consecutive_errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("last_import_id", BigId, sa.ForeignKey(fk, ondelete="SET NULL")),
        _updated_at(),
        schema=schema,
    )
    op.create_index("ix_processing_status_dataset", "processing_status", ["dataset"], schema=schema)

    op.create_table(
        "import_failed_rows",
        sa.Column("failed_row_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("import_id", BigId, sa.ForeignKey(fk, ondelete="CASCADE"), nullable=False),
        sa.Column("source_row", sa.BigInteger),
        sa.Column("column_name", sa.String(200)),
        sa.Column("category", sa.String(20), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("raw_value", sa.Text),
        sa.Column("raw_values", Json),
        _created_at(),
        schema=schema,
    )
    op.create_index(
        "ix_import_failed_rows_import_id",
        "import_failed_rows",
        ["import_id", "source_row"],
        schema=schema,
    )
    op.create_index(
        "ix_import_failed_rows_category", "import_failed_rows", ["category"], schema=schema
    )
    op.create_index(
        "ix_import_failed_rows_created_at", "import_failed_rows", ["created_at"], schema=schema
    )

    op.create_table(
        "import_reconciliation_matches",
        sa.Column("match_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("import_id", BigId, sa.ForeignKey(fk, ondelete="CASCADE"), nullable=False),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("reference_column", sa.String(200), nullable=False),
        sa.Column("entity", sa.String(200), nullable=False),
        sa.Column("input_values", Json, nullable=False),
        sa.Column("match_type", sa.String(20), nullable=False),
        sa.Column("matched_id", sa.String(200)),
        sa.Column("score", sa.Float),
        sa.Column("candidates", Json),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("rows_affected", sa.BigInteger),
        sa.Column("decided_by", sa.String(200)),
        sa.Column("decided_at", Timestamp),
        _created_at(),
        _updated_at(),
        schema=schema,
    )
    for name, cols in (
        ("ix_import_reconciliation_matches_import_id", ["import_id"]),
        ("ix_import_reconciliation_matches_decision", ["decision"]),
        ("ix_import_reconciliation_matches_entity", ["entity"]),
    ):
        op.create_index(name, "import_reconciliation_matches", cols, schema=schema)

    op.create_table(
        "import_audit_trail",
        sa.Column("audit_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("import_id", BigId, sa.ForeignKey(fk, ondelete="CASCADE")),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("details", Json),
        _created_at(),
        schema=schema,
    )
    op.create_index(
        "ix_import_audit_trail_import_id", "import_audit_trail", ["import_id"], schema=schema
    )
    op.create_index(
        "ix_import_audit_trail_created_at", "import_audit_trail", ["created_at"], schema=schema
    )

    op.create_table(
        "import_row_images",
        sa.Column("image_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("import_id", BigId, sa.ForeignKey(fk, ondelete="CASCADE"), nullable=False),
        sa.Column("target_table", sa.String(200), nullable=False),
        sa.Column("operation", sa.String(10), nullable=False),
        sa.Column("row_key", Json, nullable=False),
        sa.Column("row_data", Json, nullable=False),
        _created_at(),
        _check("operation", IMAGE_OPERATIONS, "ck_import_row_images_operation"),
        schema=schema,
    )
    op.create_index(
        "ix_import_row_images_import_id", "import_row_images", ["import_id"], schema=schema
    )
    op.create_index(
        "ix_import_row_images_target_table", "import_row_images", ["target_table"], schema=schema
    )

    _create_updated_at_triggers(schema)


def downgrade() -> None:
    schema = _schema()
    _drop_updated_at_triggers(schema)
    for table in (
        "import_row_images",
        "import_audit_trail",
        "import_reconciliation_matches",
        "import_failed_rows",
        "processing_status",
        "processed_files",
        "import_history",
    ):
        op.drop_table(table, schema=schema)


def _create_updated_at_triggers(schema: str | None) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f'CREATE OR REPLACE FUNCTION "{schema}".set_updated_at() RETURNS trigger '
            "LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$"
        )
        for table in UPDATED_AT_TABLES:
            op.execute(
                f'CREATE TRIGGER "trg_{table}_updated_at" BEFORE UPDATE ON "{schema}"."{table}" '
                f'FOR EACH ROW EXECUTE FUNCTION "{schema}".set_updated_at()'
            )
    else:
        for table in UPDATED_AT_TABLES:
            # Fires only when the UPDATE left updated_at alone, so it never recurses.
            op.execute(
                f'CREATE TRIGGER "trg_{table}_updated_at" AFTER UPDATE ON "{table}" '
                "FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at BEGIN "
                f'UPDATE "{table}" SET updated_at = CURRENT_TIMESTAMP WHERE rowid = NEW.rowid; '
                "END"
            )


def _drop_updated_at_triggers(schema: str | None) -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in UPDATED_AT_TABLES:
            op.execute(f'DROP TRIGGER IF EXISTS "trg_{table}_updated_at" ON "{schema}"."{table}"')
        op.execute(f'DROP FUNCTION IF EXISTS "{schema}".set_updated_at()')
    else:
        for table in UPDATED_AT_TABLES:
            op.execute(f'DROP TRIGGER IF EXISTS "trg_{table}_updated_at"')
