"""The columns of the tracking tables that the read queries (``tracking.history``) select
over plain DB-API (``engine.dbapi``), in the tables' order, and the kind of value each holds
where SQLite's text or integer has to be turned back into it.

``engine.schema`` defines the tables; this is what a report needs of them without importing
SQLAlchemy. ``test_light_reads.py`` holds the two to agree.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The columns of ``import_history`` that are never NULL: sorting by one needs no NULLS LAST,
#: which would keep PostgreSQL from reading the order off an index.
IMPORT_HISTORY_NOT_NULL = frozenset(
    {
        "created_at",
        "dataset",
        "forced",
        "import_id",
        "import_type",
        "source",
        "status",
        "target_table",
        "updated_at",
    }
)
#: Every column of ``import_history``.
IMPORT_HISTORY = (
    "import_id",
    "dataset",
    "target_table",
    "import_type",
    "source",
    "partition_key",
    "business_date",
    "dagster_run_id",
    "file_name",
    "file_path",
    "file_size",
    "file_type",
    "file_sha256",
    "file_metadata",
    "column_mapping",
    "strategy",
    "status",
    "phase",
    "error_message",
    "warnings",
    "error_summary",
    "rows_in_file",
    "rows_processed",
    "rows_created",
    "rows_updated",
    "rows_unchanged",
    "rows_failed",
    "rows_duplicate",
    "rows_review",
    "rows_deleted",
    "rows_done",
    "rows_expected",
    "progress_percent",
    "progress_updated_at",
    "phase_seconds",
    "total_seconds",
    "forced",
    "retry_of",
    "corrects_import_id",
    "superseded_by",
    "triggered_by",
    "worker",
    "heartbeat_at",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "user_id",
    "user_email",
    "master_rows_created",
    "master_rows_linked",
    "error_file_path",
    "archived_at",
    "schema_fingerprint",
    "schema_drift",
    "header_present",
    "spec_used",
)

#: Every column of ``processed_files``.
PROCESSED_FILES = (
    "file_id",
    "dataset",
    "sha256",
    "file_name",
    "file_size",
    "status",
    "first_import_id",
    "last_import_id",
    "times_seen",
    "first_seen_at",
    "last_seen_at",
    "updated_at",
    "file_type",
    "records_count",
    "process_date",
)

#: Every column of ``import_audit_trail``.
AUDIT_TRAIL = (
    "audit_id",
    "import_id",
    "action",
    "actor",
    "details",
    "created_at",
    "severity",
    "summary",
)

#: Column -> kind (``engine.dbapi.convert``), for the columns of these tables that need one.
KINDS = {
    "business_date": "date",
    "file_metadata": "json",
    "column_mapping": "json",
    "warnings": "json",
    "error_summary": "json",
    "progress_updated_at": "datetime",
    "phase_seconds": "json",
    "forced": "bool",
    "heartbeat_at": "datetime",
    "created_at": "datetime",
    "started_at": "datetime",
    "finished_at": "datetime",
    "updated_at": "datetime",
    "archived_at": "datetime",
    "schema_drift": "json",
    "header_present": "bool",
    "spec_used": "json",
    "first_seen_at": "datetime",
    "last_seen_at": "datetime",
    "process_date": "date",
    "details": "json",
}


def kinds(columns: Iterable[str]) -> dict[str, str]:
    """``columns`` -> their kind (``""``: as the driver returns it), in their order."""
    return {name: KINDS.get(name, "") for name in columns}
