"""The load step's two endings, in its one transaction: rejected at the error gate, or the
target written; each with the import's final tracking rows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import failpoints, reconciliation, tracking
from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import StagingLostError
from histimport_pipeline.engine.loading.direct import direct_write
from histimport_pipeline.engine.loading.sinks import Streamed
from histimport_pipeline.engine.models import AuditAction, FileStatus, ImportPhase, ImportStatus
from histimport_pipeline.engine.pipeline_records import ImportHandle, ImportOptions, ImportResult
from histimport_pipeline.engine.pipeline_steps import seconds_spent
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import corrections


def check_staging(
    conn: sa.Connection, db: Database, spec: DatasetSpec, import_id: int, expected: int
) -> int:
    """Refuse to load when the staged rows are not all there (e.g. after a server restart).

    Returns:
        The staged rows (``expected``).

    Raises:
        StagingLostError: the staging table is missing or holds another number of rows.
    """
    stage = load.staging_table(db, spec, import_id)
    found = (
        load.count_staged(conn, db, spec, import_id)
        if sa.inspect(conn).has_table(stage.name, schema=stage.schema)
        else 0
    )
    if found != expected:
        raise StagingLostError(import_id, expected, found)
    return found


def error_gate(spec: DatasetSpec, options: ImportOptions) -> float:
    """The largest share of failed rows an import may have and still load."""
    return spec.max_error_ratio if options.max_error_ratio is None else options.max_error_ratio


def finish_import(
    tx: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    status: ImportStatus,
    phase: ImportPhase,
    seconds: dict[str, float],
    row: dict[str, Any],
    **values: Any,
) -> None:
    """Final tracking rows of an import; the staging table goes in the same transaction."""
    finished = tracking.utcnow()
    total = seconds_spent(tx, db, handle.import_id, row, finished) if row["started_at"] else None
    file_status = {
        ImportStatus.SUCCESS: FileStatus.IMPORTED,
        ImportStatus.PARTIAL: FileStatus.PARTIAL,
        ImportStatus.REJECTED: FileStatus.REJECTED,
    }.get(status, FileStatus.FAILED)
    if status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL):
        values |= tracking.final_values(row["rows_processed"] or 0)
    tracking.update_import(
        tx,
        db,
        handle.import_id,
        status=status.value,
        phase=phase.value,
        phase_seconds=seconds,
        total_seconds=total,
        finished_at=finished,
        error_summary=tracking.error_summary(tx, db, handle.import_id),
        **values,
    )
    tracking.set_file_status(tx, db, spec.name, handle.sha256, handle.import_id, file_status)
    tracking.record_outcome(
        tx,
        db,
        dataset=spec.name,
        import_id=handle.import_id,
        ok=status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL),
        error=values.get("error_message"),
        business_date=handle.business_date,
    )
    load.finish_staging(tx, db, spec, handle.import_id)
    if status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL):
        corrections.supersede(tx, db, handle.import_id, row.get("triggered_by"))


@dataclass
class LoadState:
    """What the load step reads from the import's history row before either ending."""

    row: dict[str, Any]
    seconds: dict[str, float]
    read: int
    failed: int
    duplicates: int
    review: int
    warnings: list[str]
    gate: float
    share: float
    #: The ``ImportResult`` fields both endings share.
    base: dict[str, Any]


def load_state(
    tx: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    row: dict[str, Any],
) -> LoadState:
    """The import's counts so far, its failed share and the gate it is held to."""
    seconds: dict[str, float] = dict(row["phase_seconds"] or {})
    read = int(row["rows_in_file"] or 0)
    failed = int(row["rows_failed"] or 0)
    duplicates = int(row["rows_duplicate"] or 0)
    review = int(row["rows_review"] or 0)
    warnings = list(row["warnings"] or [])
    gate = error_gate(spec, options)
    share = failed / read if read else 0.0
    base: dict[str, Any] = {
        "import_id": handle.import_id,
        "dataset": spec.name,
        "file_name": handle.file_name,
        "sha256": handle.sha256,
        "rows_read": read,
        "rows_failed": failed,
        "rows_duplicate": duplicates,
        "rows_review": review,
        "dry_run": options.dry_run,
        "error_summary": tracking.error_summary(tx, db, handle.import_id),
        "schema_drift": row.get("schema_drift"),
    }
    return LoadState(row, seconds, read, failed, duplicates, review, warnings, gate, share, base)


def reject(
    tx: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    state: LoadState,
    t0: float,
) -> ImportResult:
    """Over the gate: the import ends ``rejected`` and nothing is written to the target."""
    failed, read, share, gate = state.failed, state.read, state.share, state.gate
    seconds = state.seconds
    message = (
        f"{failed} of {read} rows failed ({share:.1%}), above the dataset's limit of "
        f"{gate:.1%}; nothing was loaded. "
        + (
            "Fix the rows listed above and try again"
            if options.dry_run
            else f"See `histimport errors {handle.import_id} -o errors.csv`, fix the rows "
            "and import the file again"
        )
    )
    seconds["confirm"] = round(time.perf_counter() - t0, 4)
    # Nothing is loaded, so master rows its reconciliation created go too.
    masters_deleted = reconciliation.drop_created_masters(tx, db, handle.import_id)
    finish_import(
        tx,
        db,
        spec,
        handle,
        ImportStatus.REJECTED,
        ImportPhase.CONFIRM,
        seconds,
        state.row,
        error_message=message,
        warnings=state.warnings,
    )
    tracking.record_nothing_loaded(tx, db, handle.import_id)
    if spec.references:
        # The master rows it created are gone, and no row of it links to any.
        tracking.update_import(
            tx, db, handle.import_id, master_rows_created=0, master_rows_linked=0
        )
    tracking.record_audit(
        tx,
        db,
        handle.import_id,
        AuditAction.REJECTED,
        None,
        {
            "failed_share": round(share, 4),
            "gate": gate,
            "master_rows_deleted": masters_deleted,
        },
    )
    return ImportResult(
        status=ImportStatus.REJECTED,
        error_message=message,
        phase_seconds=seconds,
        warnings=tuple(state.warnings),
        **state.base,
    )


@dataclass(frozen=True)
class Write:
    """Where the load's rows come from: the staging table (its row count just checked), a
    direct write, or the rows already streamed into ``target``."""

    direct: load.DirectWrite | None = None
    target: sa.Table | None = None
    staged_rows: int | None = None


def prepare_write(
    tx: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    row: dict[str, Any],
    streamed: Streamed | None,
    writer: tracking.ProgressWriter,
) -> Write:
    """Check that the rows to load are all there, or plan the direct write (which reports
    its rows written to ``writer``).

    Raises:
        StagingLostError: the staged rows are not all there (nor was the file streamed).
    """
    metadata = row["file_metadata"] or {}
    if streamed is not None:
        return Write(direct=lambda _target: _streamed(tx, spec, streamed), target=streamed.table)
    if metadata.get("staged", True):
        expected = int(row["rows_processed"] or 0)
        return Write(staged_rows=check_staging(tx, db, spec, handle.import_id, expected))
    if load.loads_directly(db, spec):
        return Write(direct=direct_write(tx, spec, handle, row, writer))
    raise StagingLostError(handle.import_id, int(row["rows_processed"] or 0), 0)


def _streamed(tx: sa.Connection, spec: DatasetSpec, streamed: Streamed) -> int:
    """The write of rows COPYed in while they were checked: a new keyed table gets its key
    (a repeated key raises the unique violation the one pass falls back on)."""
    if streamed.key_later:
        load.add_primary_key(tx, spec)
    return streamed.rows


def write_and_finish(
    tx: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    state: LoadState,
    t0: float,
    write: Write,
    writer: tracking.ProgressWriter,
) -> ImportResult:
    """Under the gate: write the target, then the import's final tracking rows.

    The import's row is not updated in ``tx`` before the final rows: on PostgreSQL its lock
    would hold up the progress writes (``writer``, another connection) until the commit.
    """
    duplicates = state.duplicates
    with writer.keeping_alive():
        # A direct write into a keyed target passed its primary key: nothing conflicts.
        if spec.strategy.value == "append" and spec.key and write.direct is None:
            duplicates += load.record_append_conflicts(tx, db, spec, handle.import_id)
        counts = load.write_target(
            tx,
            db,
            spec,
            handle.import_id,
            handle.business_date,
            direct=write.direct,
            target=write.target,
            staged_rows=write.staged_rows,
        )
        failpoints.checkpoint("write")
    state.seconds["load"] = round(time.perf_counter() - t0, 4)
    review, warnings = state.review, state.warnings
    status = ImportStatus.PARTIAL if state.failed or duplicates or review else ImportStatus.SUCCESS
    if review:
        warnings.append(
            f"{review} rows wait for a reconciliation decision: see `histimport review list "
            f"--import {handle.import_id}`, then `histimport review apply {handle.import_id}`"
        )
    if state.read == 0:
        warnings.append("the file has no data rows")
    return _complete(tx, db, spec, handle, state, status, counts, duplicates)


def _complete(
    tx: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    state: LoadState,
    status: ImportStatus,
    counts: load.WriteCounts,
    duplicates: int,
) -> ImportResult:
    """The loaded import's final tracking rows and audit entries, and its result."""
    finish_import(
        tx,
        db,
        spec,
        handle,
        status,
        ImportPhase.COMPLETE,
        state.seconds,
        state.row,
        warnings=state.warnings,
        rows_created=counts.created,
        rows_updated=counts.updated,
        rows_unchanged=counts.unchanged,
        rows_deleted=counts.deleted,
        rows_duplicate=duplicates,
    )
    tracking.record_audit(
        tx,
        db,
        handle.import_id,
        AuditAction.LOADED,
        None,
        {
            "created": counts.created,
            "updated": counts.updated,
            "unchanged": counts.unchanged,
            "deleted": counts.deleted,
            "strategy": spec.strategy.value,
        },
    )
    tracking.record_audit(
        tx, db, handle.import_id, AuditAction.COMPLETED, None, {"status": status.value}
    )
    failpoints.checkpoint("commit")
    state.base["rows_duplicate"] = duplicates
    return ImportResult(
        status=status,
        rows_created=counts.created,
        rows_updated=counts.updated,
        rows_unchanged=counts.unchanged,
        rows_deleted=counts.deleted,
        phase_seconds=state.seconds,
        warnings=tuple(state.warnings),
        **state.base,
    )
