"""Table definitions of the tracking tables, as the engine uses them.

The database schema itself is created only by the migrations under ``sql/``; a test compares
the migrated database with these definitions so the two cannot drift apart. On PostgreSQL the
tables live in their own schema (``HISTIMPORT_DB_SCHEMA``, default ``histimport``); SQLite has
no schemas, so there they are built with ``schema=None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from histimport_pipeline.engine.models import (
    AdoptionStatus,
    AuditSeverity,
    FileStatus,
    ImageOperation,
    ImportPhase,
    ImportStatus,
)

#: JSON on SQLite, JSONB on PostgreSQL.
Json = sa.JSON().with_variant(JSONB(), "postgresql")
#: 64-bit keys on PostgreSQL; SQLite only auto-increments ``INTEGER PRIMARY KEY``.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", Timestamp, nullable=False, server_default=sa.func.now())


def _updated_at() -> sa.Column[object]:
    return sa.Column(
        "updated_at",
        Timestamp,
        nullable=False,
        server_default=sa.func.now(),
        onupdate=sa.func.now(),
    )


def _check_in(
    column: str,
    values: type[StrEnum],
    name: str,
) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=name)


@dataclass(frozen=True)
class TrackingTables:
    """The tracking tables for one schema (``None`` on SQLite)."""

    metadata: sa.MetaData
    import_history: sa.Table
    processed_files: sa.Table
    processing_status: sa.Table
    import_failed_rows: sa.Table
    import_reconciliation_matches: sa.Table
    import_audit_trail: sa.Table
    import_row_images: sa.Table
    reconciliation_aliases: sa.Table
    table_adoptions: sa.Table


@cache
def tracking_tables(schema: str | None) -> TrackingTables:
    """Build (once per schema) the table definitions of the tracking tables.

    Args:
        schema: PostgreSQL schema name, or ``None`` for SQLite.

    Returns:
        The tables, bound to a fresh :class:`sqlalchemy.MetaData`.
    """
    md = sa.MetaData(schema=schema)
    fk_import = f"{schema}.import_history.import_id" if schema else "import_history.import_id"
    # The tables join ``md`` in this order, as they always did (aliases reference matches).
    import_history = _import_history(md, fk_import)
    processed_files = _processed_files(md, fk_import)
    processing_status = _processing_status(md, fk_import)
    import_failed_rows = _import_failed_rows(md, fk_import)
    import_reconciliation_matches = _import_reconciliation_matches(md, fk_import)
    reconciliation_aliases = _reconciliation_aliases(md, schema)
    import_audit_trail = _import_audit_trail(md, fk_import)
    import_row_images = _import_row_images(md, fk_import)
    table_adoptions = _table_adoptions(md)
    return TrackingTables(
        metadata=md,
        import_history=import_history,
        processed_files=processed_files,
        processing_status=processing_status,
        import_failed_rows=import_failed_rows,
        import_reconciliation_matches=import_reconciliation_matches,
        import_audit_trail=import_audit_trail,
        import_row_images=import_row_images,
        reconciliation_aliases=reconciliation_aliases,
        table_adoptions=table_adoptions,
    )


def _import_history(md: sa.MetaData, fk_import: str) -> sa.Table:
    """One row per import: what was imported, how it went, its counts and timings.

    Long because: one line per column of the table.
    """
    table = sa.Table(
        "import_history",
        md,
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
        sa.Column("rows_deleted", sa.BigInteger),
        # Live progress of the current phase (see tracking.progress), written while it runs.
        sa.Column("rows_done", sa.BigInteger),
        sa.Column("rows_expected", sa.BigInteger),
        sa.Column("progress_percent", sa.Float),
        sa.Column("progress_updated_at", Timestamp),
        sa.Column("phase_seconds", Json),
        sa.Column("total_seconds", sa.Float),
        sa.Column("forced", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("retry_of", BigId, sa.ForeignKey(fk_import, ondelete="SET NULL")),
        #: The failed or rejected import this one corrects (same file name, or same date).
        sa.Column("corrects_import_id", sa.BigInteger),
        #: The import that corrected this failed one once it loaded.
        sa.Column("superseded_by", sa.BigInteger),
        sa.Column("triggered_by", sa.String(200)),
        sa.Column("worker", sa.String(200)),
        sa.Column("heartbeat_at", Timestamp),
        _created_at(),
        sa.Column("started_at", Timestamp),
        sa.Column("finished_at", Timestamp),
        _updated_at(),
        # Added by migration 0004: who imported, and the master rows reconciliation made.
        sa.Column("user_id", sa.String(200)),
        sa.Column("user_email", sa.String(320)),
        sa.Column("master_rows_created", sa.BigInteger),
        sa.Column("master_rows_linked", sa.BigInteger),
        # Added by migration 0006: the import's error file (failed rows as CSV) while it
        # exists, and when the retention cleanup archived the import (detail rows removed).
        sa.Column("error_file_path", sa.Text),
        sa.Column("archived_at", Timestamp),
        # Added by migration 0007: the schema the import read and the spec it used.
        sa.Column("schema_fingerprint", sa.String(64)),
        sa.Column("schema_drift", Json),
        sa.Column("header_present", sa.Boolean),
        sa.Column("spec_used", Json),
        _check_in("status", ImportStatus, "ck_import_history_status"),
        _check_in("phase", ImportPhase, "ck_import_history_phase"),
        sa.Index("ix_import_history_dataset_started", "dataset", "started_at"),
        sa.Index("ix_import_history_status", "status"),
        sa.Index("ix_import_history_started_at", "started_at"),
        sa.Index("ix_import_history_file_sha256", "file_sha256"),
        sa.Index("ix_import_history_partition", "dataset", "partition_key"),
        sa.Index("ix_import_history_target_table", "target_table"),
        sa.Index("ix_import_history_user_id", "user_id"),
        sa.Index("ix_import_history_user_email", "user_email"),
        sa.Index("ix_import_history_corrects", "corrects_import_id"),
        # Added by migration 0010: the web service's listing filters and sorts.
        sa.Index("ix_import_history_created_at", "created_at"),
        sa.Index("ix_import_history_dataset_status", "dataset", "status"),
        sa.Index("ix_import_history_file_name", "file_name"),
    )
    # Added by migration 0011. PostgreSQL: the file-name search (where pg_trgm could be added;
    # the migration names the operator class with the extension's schema) and the newest
    # started first sort. SQLite: the ids alone, for deep pages.
    if md.schema is None:
        sa.Index("ix_import_history_import_id", table.c.import_id)
    else:
        sa.Index(
            "ix_import_history_file_name_trgm",
            table.c.file_name,
            postgresql_using="gin",
            postgresql_ops={"file_name": "gin_trgm_ops"},
        )
        sa.Index(
            "ix_import_history_started_at_desc",
            table.c.started_at.desc().nulls_last(),
            table.c.import_id.desc(),
        )
    return table


def _processed_files(md: sa.MetaData, fk_import: str) -> sa.Table:
    """One row per file content (``dataset`` + ``sha256``): the claim that stops a re-import."""
    return sa.Table(
        "processed_files",
        md,
        sa.Column("file_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(500), nullable=False),
        sa.Column("file_size", sa.BigInteger),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("first_import_id", BigId, sa.ForeignKey(fk_import, ondelete="SET NULL")),
        sa.Column("last_import_id", BigId, sa.ForeignKey(fk_import, ondelete="SET NULL")),
        sa.Column("times_seen", sa.Integer, nullable=False, server_default="1"),
        sa.Column("first_seen_at", Timestamp, nullable=False, server_default=sa.func.now()),
        sa.Column("last_seen_at", Timestamp, nullable=False, server_default=sa.func.now()),
        _updated_at(),
        # Added by migration 0004: the file's type and records, the day it was processed.
        sa.Column("file_type", sa.String(20)),
        sa.Column("records_count", sa.BigInteger),
        sa.Column("process_date", sa.Date),
        sa.UniqueConstraint("dataset", "sha256", name="uq_processed_files_dataset_sha256"),
        _check_in("status", FileStatus, "ck_processed_files_status"),
        sa.Index("ix_processed_files_sha256", "sha256"),
        sa.Index("ix_processed_files_last_import_id", "last_import_id"),
    )


def _processing_status(md: sa.MetaData, fk_import: str) -> sa.Table:
    """One row per process (a dataset, a sensor): its last run, success and error."""
    return sa.Table(
        "processing_status",
        md,
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
        sa.Column("last_import_id", BigId, sa.ForeignKey(fk_import, ondelete="SET NULL")),
        _updated_at(),
        sa.Index("ix_processing_status_dataset", "dataset"),
    )


def _import_failed_rows(md: sa.MetaData, fk_import: str) -> sa.Table:
    """Rows that failed validation, with their original values."""
    return sa.Table(
        "import_failed_rows",
        md,
        sa.Column("failed_row_id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "import_id",
            BigId,
            sa.ForeignKey(fk_import, ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("source_row", sa.BigInteger),
        sa.Column("column_name", sa.String(200)),
        sa.Column("category", sa.String(20), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("raw_value", sa.Text),
        sa.Column("raw_values", Json),
        _created_at(),
        sa.Index("ix_import_failed_rows_import_id", "import_id", "source_row"),
        sa.Index("ix_import_failed_rows_category", "category"),
        sa.Index("ix_import_failed_rows_created_at", "created_at"),
    )


def _import_reconciliation_matches(md: sa.MetaData, fk_import: str) -> sa.Table:
    """Reconciliation decisions of an import, per distinct input value."""
    return sa.Table(
        "import_reconciliation_matches",
        md,
        sa.Column("match_id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "import_id",
            BigId,
            sa.ForeignKey(fk_import, ondelete="CASCADE"),
            nullable=False,
        ),
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
        # Added by migration 0002: the normalized input (the alias key) and the master id column.
        sa.Column("input_key", sa.Text),
        sa.Column("id_column", sa.String(200)),
        sa.Index("ix_import_reconciliation_matches_import_id", "import_id"),
        sa.Index("ix_import_reconciliation_matches_decision", "decision"),
        sa.Index("ix_import_reconciliation_matches_entity", "entity"),
        sa.Index(
            "ix_import_reconciliation_matches_import_ref",
            "import_id",
            "reference_column",
            "decision",
        ),
    )


def _reconciliation_aliases(md: sa.MetaData, schema: str | None) -> sa.Table:
    """Confirmed input values of an entity: the alias cache of reconciliation."""
    fk_match = (
        f"{schema}.import_reconciliation_matches.match_id"
        if schema
        else "import_reconciliation_matches.match_id"
    )
    return sa.Table(
        "reconciliation_aliases",
        md,
        sa.Column("alias_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(200), nullable=False),
        sa.Column("input_key", sa.Text, nullable=False),
        sa.Column("input_values", Json, nullable=False),
        sa.Column("entity_id", sa.String(200), nullable=False),
        sa.Column("match_id", BigId, sa.ForeignKey(fk_match, ondelete="SET NULL")),
        sa.Column("created_by", sa.String(200)),
        _created_at(),
        _updated_at(),
        sa.UniqueConstraint("entity", "input_key", name="uq_reconciliation_aliases_entity_key"),
    )


def _import_audit_trail(md: sa.MetaData, fk_import: str) -> sa.Table:
    """Who did what to an import, and when."""
    return sa.Table(
        "import_audit_trail",
        md,
        sa.Column("audit_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("import_id", BigId, sa.ForeignKey(fk_import, ondelete="CASCADE")),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("details", Json),
        _created_at(),
        # Added by migration 0004: how much the entry asks for attention, and what it says.
        sa.Column("severity", sa.String(10), nullable=False, server_default="info"),
        sa.Column("summary", sa.Text, nullable=False),
        _check_in("severity", AuditSeverity, "ck_import_audit_trail_severity"),
        sa.Index("ix_import_audit_trail_import_id", "import_id"),
        sa.Index("ix_import_audit_trail_created_at", "created_at"),
    )


def _import_row_images(md: sa.MetaData, fk_import: str) -> sa.Table:
    """Before-images of target rows an import changed or deleted, for rollback."""
    return sa.Table(
        "import_row_images",
        md,
        sa.Column("image_id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "import_id",
            BigId,
            sa.ForeignKey(fk_import, ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("target_table", sa.String(200), nullable=False),
        sa.Column("operation", sa.String(10), nullable=False),
        sa.Column("row_key", Json, nullable=False),
        sa.Column("row_data", Json, nullable=False),
        _created_at(),
        _check_in("operation", ImageOperation, "ck_import_row_images_operation"),
        sa.Index("ix_import_row_images_import_id", "import_id"),
        sa.Index("ix_import_row_images_target_table", "target_table"),
    )


def _table_adoptions(md: sa.MetaData) -> sa.Table:
    """Existing tables ``histimport adopt`` changed: the DDL applied and the DDL that undoes it
    (migration 0009)."""
    return sa.Table(
        "table_adoptions",
        md,
        sa.Column("adoption_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("target_table", sa.String(200), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("adopted_by", sa.String(200)),
        sa.Column("adopted_at", Timestamp, nullable=False, server_default=sa.func.now()),
        #: The rows the table held when it was adopted (they predate histimport).
        sa.Column("rows_before", sa.BigInteger, nullable=False),
        sa.Column("ddl", Json, nullable=False),
        sa.Column("undo_ddl", Json, nullable=False),
        #: What the DDL added, by kind: columns, indexes, triggers, functions.
        sa.Column("added", Json, nullable=False),
        sa.Column("undone_by", sa.String(200)),
        sa.Column("undone_at", Timestamp),
        _check_in("status", AdoptionStatus, "ck_table_adoptions_status"),
        sa.Index("ix_table_adoptions_target", "target_table"),
    )


#: Tables that carry an ``updated_at`` column kept current by a trigger.
UPDATED_AT_TABLES = (
    "import_history",
    "processed_files",
    "processing_status",
    "import_reconciliation_matches",
    "reconciliation_aliases",
)
