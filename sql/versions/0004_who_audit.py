"""Who imported, the audit trail's severity and summary, processed files' type and records.

* ``import_history``: ``user_id`` and ``user_email`` (indexed; ``user_id`` backfilled from
  ``triggered_by``), ``master_rows_created`` and ``master_rows_linked``; a TSV file's
  ``file_type`` becomes ``tsv`` (it was ``csv``).
* ``import_audit_trail``: ``severity`` (info, warning, error) and a one-line ``summary``,
  backfilled from each entry's action and details; entries without an actor get their
  import's user.
* ``processed_files``: ``file_type``, ``records_count`` and ``process_date``, backfilled from
  the import that last processed the content.

The backfills are plain SQL, so ``histimport db sql`` renders them for a DBA as well.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
HISTORY = "import_history"
AUDIT = "import_audit_trail"
FILES = "processed_files"
SEVERITY_CHECK = "ck_import_audit_trail_severity"
HISTORY_COLUMNS = ("user_id", "user_email", "master_rows_created", "master_rows_linked")
HISTORY_INDEXES = {
    "ix_import_history_user_id": "user_id",
    "ix_import_history_user_email": "user_email",
}
FILE_COLUMNS = ("file_type", "records_count", "process_date")


def _schema() -> str | None:
    schema: str | None = op.get_context().version_table_schema
    return schema


def _postgres() -> bool:
    return bool(op.get_context().dialect.name == "postgresql")


def _tables(schema: str | None) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The columns the backfills read and write, as they are at this revision."""
    md = sa.MetaData(schema=schema)
    history = sa.Table(
        HISTORY,
        md,
        sa.Column("import_id", sa.BigInteger),
        sa.Column("triggered_by", sa.String),
        sa.Column("user_id", sa.String),
        sa.Column("file_type", sa.String),
        sa.Column("file_metadata", Json),
        sa.Column("rows_in_file", sa.BigInteger),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    audit = sa.Table(
        AUDIT,
        md,
        sa.Column("import_id", sa.BigInteger),
        sa.Column("action", sa.String),
        sa.Column("actor", sa.String),
        sa.Column("details", Json),
        sa.Column("severity", sa.String),
        sa.Column("summary", sa.Text),
    )
    files = sa.Table(
        FILES,
        md,
        sa.Column("last_import_id", sa.BigInteger),
        sa.Column("status", sa.String),
        sa.Column("file_type", sa.String),
        sa.Column("records_count", sa.BigInteger),
        sa.Column("process_date", sa.Date),
    )
    return history, audit, files


def _text(details: Any, key: str) -> Any:
    return sa.func.coalesce(details[key].as_string(), "?")


def _summaries(audit: sa.Table) -> Any:
    """A one-line summary per action, from what the entry's details hold."""
    d, a = audit.c.details, audit.c.action

    def lit(text: str) -> Any:
        return sa.literal(text, sa.Text)

    by_action: dict[str, Any] = {
        "started": lit("import started") + sa.func.coalesce(lit(" by ") + audit.c.actor, ""),
        "parsed": lit("parsed the file as ") + _text(d, "format"),
        "validated": lit("validated ")
        + _text(d, "rows_read")
        + lit(" rows: ")
        + _text(d, "rows_failed")
        + lit(" failed, ")
        + _text(d, "rows_duplicate")
        + lit(" duplicate"),
        "reconciled": lit("reconciled the references: ")
        + _text(d, "rows_review")
        + lit(" rows held for review, ")
        + _text(d, "rows_rejected")
        + lit(" rejected"),
        "confirmed": lit("failed share within the error gate; the import may load"),
        "rejected": lit("rejected: failed share above the error gate; nothing loaded"),
        "loaded": lit("loaded: ")
        + _text(d, "created")
        + lit(" created, ")
        + _text(d, "updated")
        + lit(" updated, ")
        + _text(d, "unchanged")
        + lit(" unchanged"),
        "completed": lit("completed: ") + _text(d, "status"),
        "failed": lit("failed: ")
        + sa.func.coalesce(d["error"].as_string(), d["reason"].as_string(), "see details"),
        "duplicate": lit("duplicate of import ")
        + _text(d, "holder_import_id")
        + lit("; nothing loaded"),
        "resumed": lit("resumed after an earlier attempt"),
        "moved": lit("file ") + _text(d, "reason") + lit(" to ") + _text(d, "to"),
        "review_accepted": lit("review: accepted, matched to ") + _text(d, "entity_id"),
        "review_rejected": lit("review: rejected the value"),
        "review_applied": lit("review applied: loaded ")
        + _text(d, "rows_loaded")
        + lit(", still held ")
        + _text(d, "rows_still_held"),
        "rolled_back": lit("rolled back: ")
        + _text(d, "rows_deleted")
        + lit(" rows deleted, ")
        + _text(d, "rows_restored")
        + lit(" restored"),
        "cleanup": lit("cleanup of records older than ")
        + _text(d, "older_than_days")
        + lit(" days"),
    }
    text = sa.case(*((a == k, v) for k, v in by_action.items()), else_=sa.cast(a, sa.Text))
    one_line = sa.func.replace(sa.func.replace(text, "\r", " "), "\n", " ")
    return sa.func.substr(one_line, 1, 300)


def _severities(audit: sa.Table) -> Any:
    a = audit.c.action
    status, reason = audit.c.details["status"].as_string(), audit.c.details["reason"].as_string()
    return sa.case(
        (a.in_(["failed", "rejected"]), "error"),
        (a.in_(["duplicate", "review_rejected", "rolled_back"]), "warning"),
        (sa.and_(a == "completed", status == "partial"), "warning"),
        (sa.and_(a == "moved", reason == "quarantined"), "warning"),
        else_="info",
    )


def _day(stamp: Any) -> Any:
    """The UTC calendar day of a timestamp, as each database stores a DATE."""
    if _postgres():
        return sa.cast(sa.func.timezone("UTC", stamp), sa.Date)
    return sa.func.date(stamp)


def upgrade() -> None:
    schema = _schema()
    history, audit, files = _tables(schema)
    # Plain ADD COLUMN: a batch "move and copy" on SQLite would drop the updated_at trigger.
    op.add_column(HISTORY, sa.Column("user_id", sa.String(200)), schema=schema)
    op.add_column(HISTORY, sa.Column("user_email", sa.String(320)), schema=schema)
    op.add_column(HISTORY, sa.Column("master_rows_created", sa.BigInteger), schema=schema)
    op.add_column(HISTORY, sa.Column("master_rows_linked", sa.BigInteger), schema=schema)
    for name, column in HISTORY_INDEXES.items():
        op.create_index(name, HISTORY, [column], schema=schema)
    op.execute(sa.update(history).values(user_id=history.c.triggered_by))
    op.execute(
        sa.update(history)
        .where(
            history.c.file_type == "csv", history.c.file_metadata["delimiter"].as_string() == "\t"
        )
        .values(file_type="tsv")
    )

    op.add_column(FILES, sa.Column("file_type", sa.String(20)), schema=schema)
    op.add_column(FILES, sa.Column("records_count", sa.BigInteger), schema=schema)
    op.add_column(FILES, sa.Column("process_date", sa.Date), schema=schema)

    def of_last_import(value: Any) -> Any:
        return (
            sa.select(value).where(history.c.import_id == files.c.last_import_id).scalar_subquery()
        )

    op.execute(
        sa.update(files).values(
            file_type=of_last_import(history.c.file_type),
            records_count=of_last_import(history.c.rows_in_file),
        )
    )
    op.execute(
        sa.update(files)
        .where(files.c.status != "processing")
        .values(
            process_date=of_last_import(
                _day(sa.func.coalesce(history.c.finished_at, history.c.started_at))
            )
        )
    )

    # The audit trail has no updated_at trigger, so SQLite may rebuild it (batch) below.
    op.add_column(
        AUDIT,
        sa.Column("severity", sa.String(10), nullable=False, server_default="info"),
        schema=schema,
    )
    op.add_column(AUDIT, sa.Column("summary", sa.Text), schema=schema)
    op.execute(
        sa.update(audit)
        .where(audit.c.actor.is_(None), audit.c.import_id.is_not(None))
        .values(
            actor=sa.select(history.c.user_id)
            .where(history.c.import_id == audit.c.import_id)
            .scalar_subquery()
        )
    )
    op.execute(sa.update(audit).values(severity=_severities(audit), summary=_summaries(audit)))
    with op.batch_alter_table(AUDIT, schema=schema) as batch:
        batch.alter_column("summary", existing_type=sa.Text, nullable=False)
        batch.create_check_constraint(SEVERITY_CHECK, "severity IN ('info', 'warning', 'error')")


def downgrade() -> None:
    schema = _schema()
    history, _audit, _files = _tables(schema)
    with op.batch_alter_table(AUDIT, schema=schema) as batch:
        batch.drop_constraint(SEVERITY_CHECK, type_="check")
        batch.drop_column("summary")
        batch.drop_column("severity")
    # The actors the upgrade filled in stay: they are the imports' users, as recorded.
    op.execute(sa.update(history).where(history.c.file_type == "tsv").values(file_type="csv"))
    for name in HISTORY_INDEXES:
        op.drop_index(name, HISTORY, schema=schema)
    for table, columns in ((HISTORY, HISTORY_COLUMNS), (FILES, FILE_COLUMNS)):
        for column in columns:
            if _postgres():
                op.drop_column(table, column, schema=schema)
            else:
                # SQLite >= 3.35 drops a column in place, keeping the table's triggers.
                op.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
