"""The JSON shapes of the API, as pydantic models (they make the OpenAPI schema at
``/docs``). Field names are those of the tracking tables and of the source designs
(``import_id``, ``status``, ``rows_created``, ``total_count``...); times are ISO 8601 in UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Progress(_Model):
    """Live progress of a running import."""

    rows_done: int | None = None
    rows_expected: int | None = None
    progress_percent: float | None = None
    progress_updated_at: dt.datetime | None = None


class ImportSummary(Progress):
    """One import in a listing."""

    import_id: int
    dataset: str
    target_table: str
    status: str
    phase: str | None = None
    import_type: str
    source: str
    partition_key: str | None = None
    business_date: dt.date | None = None
    file_name: str | None = None
    rows_in_file: int | None = None
    #: ``rows_created`` under the name the designs give it.
    rows_inserted: int | None = None
    rows_created: int | None = None
    rows_updated: int | None = None
    rows_unchanged: int | None = None
    rows_failed: int | None = None
    rows_duplicate: int | None = None
    rows_deleted: int | None = None
    total_seconds: float | None = None
    triggered_by: str | None = None
    user_id: str | None = None
    user_email: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error_message: str | None = None
    schema_fingerprint: str | None = None
    schema_drift: dict[str, Any] | None = None
    header_present: bool | None = None
    #: Where this import is on the API and the page.
    url: str
    page_url: str


class ImportList(_Model):
    """A page of imports: ``total_count`` counts every match, over all pages."""

    imports: list[ImportSummary]
    total_count: int
    limit: int
    offset: int


class AuditEntry(_Model):
    audit_id: int
    action: str
    severity: str
    summary: str
    actor: str | None = None
    details: dict[str, Any] | None = None
    created_at: dt.datetime


class FailedRowsSummary(_Model):
    total: int
    by_category: dict[str, int]


class Links(_Model):
    """Where to look further: the Dagster run (when ``HISTIMPORT_DAGSTER_URL`` is set), the
    failed rows as CSV, the live status and the page."""

    dagster_run: str | None = None
    failed_rows_csv: str | None = None
    status: str
    page: str


class ImportDetail(ImportSummary):
    """Everything recorded about one import (what ``histimport show`` shows)."""

    model_config = ConfigDict(extra="allow")

    dagster_run_id: str | None = None
    file_path: str | None = None
    file_size: int | None = None
    file_type: str | None = None
    file_sha256: str | None = None
    file_metadata: dict[str, Any] | None = None
    column_mapping: dict[str, Any] | None = None
    strategy: str | None = None
    warnings: list[Any] | None = None
    error_summary: dict[str, Any] | None = None
    rows_processed: int | None = None
    rows_review: int | None = None
    phase_seconds: dict[str, float] | None = None
    forced: bool | None = None
    retry_of: int | None = None
    corrects_import_id: int | None = None
    superseded_by: int | None = None
    worker: str | None = None
    heartbeat_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    master_rows_created: int | None = None
    master_rows_linked: int | None = None
    error_file_path: str | None = None
    archived_at: dt.datetime | None = None
    spec_used: dict[str, Any] | None = None
    audit_trail: list[AuditEntry]
    failed_rows: FailedRowsSummary
    processed_file: dict[str, Any] | None = None
    reconciliation: dict[str, int]
    links: Links


class ImportStatus(Progress):
    """An import's lifecycle and live progress: cheap enough to poll every second."""

    import_id: int
    dataset: str
    file_name: str | None = None
    status: str
    phase: str | None = None
    finished: bool = Field(description="True once the import has ended, whatever its status.")
    heartbeat_at: dt.datetime | None = None


class FreshnessEntry(_Model):
    check: str
    fresh: bool
    description: str
    fresh_until: dt.datetime | None = None


class Dataset(_Model):
    """A dataset: its spec's main facts and how its imports stand."""

    name: str
    description: str | None = None
    target_table: str
    partitioning: str
    strategy: str
    files: str | None = None
    spec: dict[str, Any]
    imports: int
    last_import: dict[str, Any] | None = None
    last_success_at: dt.datetime | None = None
    processes: list[dict[str, Any]]
    freshness: list[FreshnessEntry]


class Review(_Model):
    """A value waiting for a reviewer's decision (or a decided one)."""

    model_config = ConfigDict(extra="allow")

    match_id: int
    import_id: int | None = None
    dataset: str
    reference_column: str
    entity: str
    input_values: dict[str, Any] | None = None
    match_type: str | None = None
    matched_id: str | None = None
    score: float | None = None
    candidates: list[Any] | None = None
    decision: str


class Decision(_Model):
    """A reviewer's decision: accept takes ``entity_id`` or else the suggested candidate."""

    entity_id: str | None = None


class UploadAccepted(_Model):
    """An upload in the dataset's inbox folder, and where to follow it."""

    dataset: str
    file_name: str
    sha256: str
    size: int
    uploaded_at: dt.datetime
    uploaded_by: str
    mode: str = Field(
        description="sensor: the Dagster inbox sensor imports it; direct: the service"
    )
    status_url: str
    import_id: int | None = None


class UploadStatus(_Model):
    """Whether an upload has been picked up, and by which import."""

    dataset: str
    sha256: str
    import_id: int | None = None
    status: str | None = None
    phase: str | None = None
    import_url: str | None = None


class RollbackRequest(_Model):
    cascade: bool = False


class RollbackAnswer(_Model):
    model_config = ConfigDict(extra="allow")

    import_id: int
    already: bool
    nothing_loaded: bool
    undone: list[dict[str, Any]]
