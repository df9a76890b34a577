"""One import, step by step: start → stage (parse + validate) → reconcile → load.

Each step is a function that the CLI calls in a row (:func:`run_import`) and the Dagster
layer calls as separate ops, passing the small :class:`ImportHandle` between them. Data
between steps lives in the import's staging table, never in memory.

Transactions: the start (history row + file claim) commits on its own so that a concurrent
attempt sees the claim; staging commits per batch; the load writes the target and every
final tracking row in one transaction. A crash anywhere leaves the whole import or nothing
in the target.

Where the work is: ``pipeline_records`` (the records), ``pipeline_steps`` (what every step
records on the import), ``loading`` (staging, the direct load, the target write and the
load's endings).

Long because: the steps, the CLI's ``run_import`` and its one-pass and dry-run paths are kept
together in pipeline order; moving the one-pass and dry-run paths into ``loading`` would bring
it under 500 lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine import reconciliation, tracking
from histimport_pipeline.engine.db import Database, is_unavailable, unavailable_as_transient
from histimport_pipeline.engine.digest import file_digest
from histimport_pipeline.engine.errors import (
    ContentBusyError,
    FileError,
    HistimportError,
    UnexpectedImportError,
    describe_cause,
)
from histimport_pipeline.engine.loading import outcome
from histimport_pipeline.engine.loading.memory import fewer_collections
from histimport_pipeline.engine.loading.outcome import error_gate
from histimport_pipeline.engine.loading.sinks import IntoTarget, Streamed
from histimport_pipeline.engine.loading.staging import stage
from histimport_pipeline.engine.migrations import ensure_schema
from histimport_pipeline.engine.models import AuditAction, FileStatus, ImportPhase, ImportStatus
from histimport_pipeline.engine.pipeline_records import (
    ImportHandle,
    ImportOptions,
    ImportResult,
    OnWait,
    Progress,
    StageResult,
)
from histimport_pipeline.engine.pipeline_steps import (
    all_steps_here,
    claim_content,
    file_business_date,
    in_tx,
    record_parsed,
    release,
    take_over,
)
from histimport_pipeline.engine.reading import open_file
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.tracking import failed_rows

__all__ = [
    "ImportHandle",
    "ImportOptions",
    "ImportResult",
    "OnWait",
    "Progress",
    "StageResult",
    "confirm_import",
    "ensure_schema",
    "fail_import",
    "inspect_file",
    "load_import",
    "reconcile_import",
    "run_import",
    "stage_file",
    "start_import",
    "with_error_file",
]


#: Gives a file's SHA-256 and size (see ``start_import``).
Digest = Callable[[], tuple[str, int]]


def start_import(
    db: Database,
    spec: DatasetSpec,
    path: Path,
    options: ImportOptions = ImportOptions(),
    conn: sa.Connection | None = None,
    on_wait: OnWait | None = None,
    digest: Digest | None = None,
) -> ImportHandle:
    """Record a new import of ``path`` and claim its content for it.

    Imports of the dataset left ``running`` by a dead worker are marked failed first (see
    ``tracking.fail_dead_imports``). While another live import holds the same content, this
    one waits for it to end, at most ``options.wait_for_holder_s`` (not inside a caller's
    transaction). When the content was already imported (and ``force`` is off) the import is
    recorded as ``duplicate`` at once and the handle says which import holds the content.

    Args:
        on_wait: called with the holder's id when the wait for it begins.
        digest: gives the file's SHA-256 and size (a ``digest.DigestAhead``'s ``result``,
            started before this); by default they are worked out here.

    Raises:
        FileError: the file is missing, or a daily dataset's file name has no date.
        ContentBusyError: the holder still runs after the wait; this import is recorded as
            failed with that message and nothing was loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileError(path, "no such file", hint="Check the path")
    sha, size = digest() if digest is not None else file_digest(path)
    business_date = file_business_date(spec, path, options)
    handle, busy = claim_content(db, spec, path, options, conn, on_wait, sha, size, business_date)
    if busy is not None:
        raise busy  # after the commit: the refused attempt stays on record
    return handle


def inspect_file(
    db: Database, spec: DatasetSpec, handle: ImportHandle, conn: sa.Connection | None = None
) -> dict[str, Any]:
    """The parse step on its own: detect format, encoding, dialect and map the headers.

    Records what was detected on the import. Reading every row happens in :func:`stage_file`.

    Returns:
        The detected file metadata.

    Raises:
        FileError: the file cannot be read as the dataset (format, encoding, headers).
    """
    take_over(db, handle, conn)
    with open_file(Path(handle.file_path), spec) as parsed:
        info = parsed.info
    with in_tx(db, conn) as tx:
        record_parsed(tx, db, handle, info)
        release(tx, db, handle.import_id)
    return {**info.as_metadata(), "mapping": info.mapping, "warnings": list(info.warnings)}


def stage_file(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions = ImportOptions(),
    progress: Progress | None = None,
    conn: sa.Connection | None = None,
) -> StageResult:
    """Parse and validate the file, staging valid rows and recording failed ones.

    Delimited UTF-8 files on PostgreSQL are read by the columnar reader (pyarrow; see
    ``engine.reading.columnar``), every other file, and any file that reader declines part-way, by
    the Python reader; the outcome is the same. When the load will COPY the file straight
    into the target (``loading.loads_directly``), the valid rows are only counted here: the load
    reads the file again. Memory stays bounded: rows flow through in batches.

    Raises:
        FileError: a file-level problem (format, encoding, headers); nothing is staged.
    """
    return stage(db, spec, handle, options, progress, conn)


def reconcile_import(
    db: Database, spec: DatasetSpec, handle: ImportHandle, conn: sa.Connection | None = None
) -> dict[str, Any]:
    """Resolve the dataset's entity references in the staged rows.

    A dataset without ``references`` passes through untouched.

    Returns:
        Counts of the reconciliation (empty when there is nothing to reconcile).
    """
    if not spec.references:
        with in_tx(db, conn) as tx:
            tracking.update_import(tx, db, handle.import_id, phase=ImportPhase.CONFIRM.value)
        return {}
    take_over(db, handle, conn)
    t0 = time.perf_counter()
    staged = _rows_processed(db, handle, conn)
    writer = tracking.ProgressWriter(db, handle.import_id, 0.0, enabled=conn is None)
    # It works set-wise in one transaction (on SQLite holding the write lock): its start is
    # written here, its end with its outcome.
    writer.start(ImportPhase.RECONCILE, staged)
    with in_tx(db, conn) as tx:
        tracking.record_audit(
            tx,
            db,
            handle.import_id,
            AuditAction.RECONCILIATION_STARTED,
            None,
            {"references": sorted(spec.references)},
        )
        row = tracking.get_import(tx, db, handle.import_id) or {}
        outcome = reconciliation.reconcile_staged(tx, db, spec, handle.import_id)
        masters = reconciliation.master_row_counts(tx, db, handle.import_id)
        seconds = dict(row.get("phase_seconds") or {})
        seconds["reconcile"] = round(time.perf_counter() - t0, 4)
        tracking.update_import(
            tx,
            db,
            handle.import_id,
            rows_review=outcome.rows_review,
            rows_failed=int(row.get("rows_failed") or 0) + outcome.rows_rejected,
            phase_seconds=seconds,
            phase=ImportPhase.CONFIRM.value,
            **masters,
            rows_done=staged,
            rows_expected=staged,
            progress_percent=tracking.percent(staged, staged),
            progress_updated_at=tracking.utcnow(),
        )
        release(tx, db, handle.import_id)
        tracking.record_audit(
            tx,
            db,
            handle.import_id,
            AuditAction.RECONCILED,
            None,
            {
                "matches": outcome.matches,
                "comparisons": outcome.comparisons,
                "rows_review": outcome.rows_review,
                "rows_rejected": outcome.rows_rejected,
                "rows_without_id": outcome.rows_without_id,
                **masters,
            },
        )
    return {
        **masters,
        "rows_waiting_for_review": outcome.rows_review,
        "rows_rejected_by_reconciliation": outcome.rows_rejected,
        "rows_loaded_without_id": sum(outcome.rows_without_id.values()),
        "comparisons": outcome.comparisons,
        **{f"matches_{k}": v for k, v in outcome.matches.items()},
    }


def confirm_import(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions = ImportOptions(),
    conn: sa.Connection | None = None,
) -> ImportResult | None:
    """Apply the error gate to the checked and reconciled rows (the CONFIRM phase).

    Over the gate (failed share above ``max_error_ratio``, or the run's override) the import
    ends ``rejected``: nothing is written to the target, master rows its reconciliation
    created are dropped, and the rejection is returned. Under it the audit trail records
    ``confirmed`` and ``load_import`` may write the target.

    Returns:
        The rejected import's result, or None when the import may load.
    """
    take_over(db, handle, conn)
    t0 = time.perf_counter()
    with in_tx(db, conn) as tx:
        tracking.update_import(tx, db, handle.import_id, phase=ImportPhase.CONFIRM.value)
        row = tracking.get_import(tx, db, handle.import_id)
        if row is None:
            raise HistimportError(f"import {handle.import_id} vanished from import_history")
        state = outcome.load_state(tx, db, spec, handle, options, row)
        if state.share > state.gate:
            return outcome.reject(tx, db, spec, handle, options, state, t0)
        tracking.record_audit(
            tx,
            db,
            handle.import_id,
            AuditAction.CONFIRMED,
            None,
            {"failed_share": round(state.share, 4), "gate": state.gate},
        )
        release(tx, db, handle.import_id)
    return None


def load_import(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions = ImportOptions(),
    conn: sa.Connection | None = None,
    *,
    streamed: Streamed | None = None,
) -> ImportResult:
    """Write the target and the final tracking rows atomically, once ``confirm_import`` let
    the import through its error gate (this step does not apply the gate again).

    Args:
        streamed: the rows already in the target, uncommitted in ``conn``'s transaction
            (``run_import``'s one pass): only the tracking rows are written (and, for a new
            keyed table, its primary key).
    """
    take_over(db, handle, conn)
    t0 = time.perf_counter()
    # With a caller's transaction (a dry run, or the one pass that holds the import's row
    # since its confirm step) a progress write would wait for it: only the end is recorded.
    writer = tracking.ProgressWriter(
        db, handle.import_id, options.progress_every_s, enabled=conn is None
    )
    writer.start(ImportPhase.LOAD, _rows_processed(db, handle, conn))
    with in_tx(db, conn) as tx, writer.holding_lock():
        load.tune_session(tx, db)
        row = tracking.get_import(tx, db, handle.import_id)
        if row is None:
            raise HistimportError(f"import {handle.import_id} vanished from import_history")
        state = outcome.load_state(tx, db, spec, handle, options, row)
        write = outcome.prepare_write(tx, db, spec, handle, row, streamed, writer)
        return outcome.write_and_finish(tx, db, spec, handle, state, t0, write, writer)


def _rows_processed(db: Database, handle: ImportHandle, conn: sa.Connection | None) -> int:
    """The rows the stage step found valid: what reconciliation and the load go through."""
    t = db.tables.import_history
    query = sa.select(t.c.rows_processed).where(t.c.import_id == handle.import_id)
    if conn is not None:
        return int(conn.execute(query).scalar() or 0)
    with db.reader() as reader:
        return int(reader.execute(query).scalar() or 0)


def _confirm_and_load(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    conn: sa.Connection | None = None,
    *,
    streamed: Streamed | None = None,
) -> ImportResult:
    rejected = confirm_import(db, spec, handle, options, conn)
    if rejected is not None:
        return rejected
    return load_import(db, spec, handle, options, conn, streamed=streamed)


def fail_import(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    error: BaseException,
    *,
    keep_staging: bool = False,
) -> ImportResult:
    """Record that an import failed; the target was not touched.

    Args:
        keep_staging: keep the staging table so a retry can resume at the load step.
    """
    message = describe_cause(error)
    with db.engine.begin() as tx:
        row = tracking.get_import(tx, db, handle.import_id) or {}
        finished = tracking.utcnow()
        tracking.update_import(
            tx,
            db,
            handle.import_id,
            status=ImportStatus.FAILED.value,
            error_message=message,
            finished_at=finished,
            heartbeat_at=finished,
            error_summary=tracking.error_summary(tx, db, handle.import_id),
        )
        tracking.record_nothing_loaded(tx, db, handle.import_id)
        tracking.set_file_status(
            tx, db, spec.name, handle.sha256, handle.import_id, FileStatus.FAILED
        )
        tracking.record_outcome(
            tx,
            db,
            dataset=spec.name,
            import_id=handle.import_id,
            ok=False,
            error=message,
            business_date=handle.business_date,
        )
        details: dict[str, Any] = {"error": message, "type": type(error).__name__}
        if isinstance(error, HistimportError):
            details |= {k: v for k, v in error.facts.items() if isinstance(v, str | int)}
        tracking.record_audit(tx, db, handle.import_id, AuditAction.FAILED, None, details)
    if not keep_staging:
        load.drop_staging(db, handle.import_id)
    return ImportResult(
        import_id=handle.import_id,
        dataset=spec.name,
        status=ImportStatus.FAILED,
        file_name=handle.file_name,
        sha256=handle.sha256,
        error_message=message,
        rows_read=int(row.get("rows_in_file") or 0),
        rows_failed=int(row.get("rows_failed") or 0),
    )


def run_import(
    db: Database,
    spec: DatasetSpec,
    path: Path,
    options: ImportOptions = ImportOptions(),
    progress: Progress | None = None,
    on_wait: OnWait | None = None,
    digest: Digest | None = None,
) -> ImportResult:
    """Import one file from start to end.

    A dry run does everything, including the target write, inside one transaction that is
    rolled back: its counts are exactly what a real import would do, and nothing is kept.

    Args:
        on_wait: see ``start_import`` (another live import holds the same content).
        digest: see ``start_import`` (the file's hash, worked out ahead).

    Returns:
        How the import ended. File-level errors end as ``failed`` with the error's message;
        they are not raised. So does an import of content that another live import still
        holds after the wait (``ContentBusyError``): nothing was loaded.

    Raises:
        DatabaseUnavailableError: the database could not be reached (worth a retry).
        UnexpectedImportError: any other error (a bug, a statement the database refused);
            the import is recorded as failed with the error's cause, which is chained.
    """
    # Fewer garbage collections for the whole import: in a fresh process the first full
    # collection of everything imported cost about 0.1 s, whatever the file's size.
    with unavailable_as_transient(db.engine.url), fewer_collections():
        ensure_schema(db)
        if options.dry_run:
            return _dry_run(db, spec, Path(path), options, progress, digest)
        result = _run_steps(db, spec, Path(path), options, progress, on_wait, digest)
        return with_error_file(db, result, options.error_dir)


def _run_steps(
    db: Database,
    spec: DatasetSpec,
    path: Path,
    options: ImportOptions,
    progress: Progress | None,
    on_wait: OnWait | None,
    digest: Digest | None,
) -> ImportResult:
    try:
        handle = start_import(db, spec, path, options, on_wait=on_wait, digest=digest)
    except ContentBusyError as busy:
        return _busy_result(spec, path, options, busy)
    if handle.duplicate_of is not None:
        return _duplicate_result(spec, handle)
    steps_here = all_steps_here.set(True)
    try:
        if load.loads_in_one_pass(db, spec):
            return _import_in_one_pass(db, spec, handle, options, progress)
        stage_file(db, spec, handle, options, progress)
        reconcile_import(db, spec, handle)
        return _confirm_and_load(db, spec, handle, options)
    except HistimportError as exc:
        if not exc.terminal:
            raise
        return fail_import(db, spec, handle, exc)
    except BaseException as exc:
        fail_import(db, spec, handle, exc)
        if not isinstance(exc, Exception) or is_unavailable(exc):
            raise  # an interrupt, or a lost database (retried as transient)
        raise UnexpectedImportError(handle.import_id, describe_cause(exc)) from exc
    finally:
        all_steps_here.reset(steps_here)


def with_error_file(db: Database, result: ImportResult, error_dir: Path | None) -> ImportResult:
    """Write the error file of an import that ended with failed rows (loaded, rejected or
    failed) and return its result with ``error_file_path`` set.

    Every surface calls it once the import has ended: ``run_import`` (the CLI), the Dagster
    step that settles the import. A dry run, a duplicate, an import without failed rows or
    ``error_dir`` ``None`` write nothing. A file that cannot be written (disk full, no
    permission) does not undo the import: the result carries a warning instead.

    Args:
        error_dir: the error folder (``HISTIMPORT_ERROR_DIR``), or ``None``.
    """
    if (
        error_dir is None
        or result.dry_run
        or result.status is ImportStatus.DUPLICATE
        or not (result.rows_failed or result.rows_duplicate)
    ):
        return result
    try:
        path = failed_rows.write_error_file(db, result.import_id, error_dir)
    except OSError as exc:
        warning = (
            f"could not write the error file in {error_dir} ({exc.strerror or exc}); "
            f"`histimport errors {result.import_id} -o FILE` writes it elsewhere"
        )
        return replace(result, warnings=(*result.warnings, warning))
    return replace(result, error_file_path=str(path) if path else None)


def _import_in_one_pass(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    progress: Progress | None,
) -> ImportResult:
    """``run_import`` of an append on PostgreSQL (``loads_in_one_pass``): check the rows and
    COPY them into the target in one streaming pass, in the load transaction.

    The steps are the same as ``stage_file`` + ``load_import``, and so are every tracking row
    and the outcome; what differs is that nothing waits between them, so the server writes
    the target while the next block is being checked. Over the error gate the transaction
    rolls back and the import is rejected as usual; a file the columnar reader declines is
    staged by the Python reader and loaded step by step.

    With a key, a new target gets its primary key after the rows (one index build), and an
    existing one checks each row against its key as the COPY goes. A key repeated in the
    file or already in the table is a unique violation: the pass is rolled back and the file
    staged as usual (``stage_file`` starts from a clean slate), so that each such row is
    recorded as a duplicate. A clean file is then written once, not three times.
    """
    try:
        with db.engine.connect() as conn, conn.begin() as transaction:
            load.tune_session(conn, db)
            new = load.create_target_keyed_later(conn, spec)
            target = new if new is not None else load.ensure_target(conn, spec)
            staged = stage(db, spec, handle, options, progress, None, IntoTarget(conn, target))
            if staged.into_target:
                share = staged.rows_failed / staged.rows_read if staged.rows_read else 0.0
                # The gate can only be known once the pass has written the target: over it
                # the transaction rolls back, and the step by step path below records the
                # rejection.
                if share <= error_gate(spec, options):
                    streamed = Streamed(target, staged.rows_staged, key_later=new is not None)
                    return _confirm_and_load(db, spec, handle, options, conn, streamed=streamed)
            transaction.rollback()
    except Exception as exc:
        if not (spec.key and load.is_unique_violation(exc)):
            raise
        # A repeated key: staged, the duplicates are found and recorded row by row.
        why = (
            f"the one-pass load into {spec.target_table} met a key repeated in the file or "
            "already in the table and was rolled back; the rows are staged to record each "
            "such row as a duplicate"
        )
        stage(db, spec, handle, options, progress, None, restarted=why)
    reconcile_import(db, spec, handle)
    return _confirm_and_load(db, spec, handle, options)


def _busy_result(
    spec: DatasetSpec, path: Path, options: ImportOptions, busy: ContentBusyError
) -> ImportResult:
    return ImportResult(
        import_id=busy.import_id,
        dataset=spec.name,
        status=ImportStatus.FAILED,
        file_name=options.file_name or path.name,
        sha256="",
        error_message=str(busy),
        dry_run=options.dry_run,
    )


def _duplicate_result(spec: DatasetSpec, handle: ImportHandle) -> ImportResult:
    return ImportResult(
        import_id=handle.import_id,
        dataset=spec.name,
        status=ImportStatus.DUPLICATE,
        file_name=handle.file_name,
        sha256=handle.sha256,
        duplicate_of=handle.duplicate_of,
        error_message=f"already imported by import {handle.duplicate_of}",
    )


def _dry_run(
    db: Database,
    spec: DatasetSpec,
    path: Path,
    options: ImportOptions,
    progress: Progress | None,
    digest: Digest | None,
) -> ImportResult:
    with db.engine.connect() as conn:
        outer = conn.begin()
        try:
            try:
                handle = start_import(db, spec, path, options, conn=conn, digest=digest)
            except ContentBusyError as busy:
                return _busy_result(spec, path, options, busy)
            if handle.duplicate_of is not None:
                result = _duplicate_result(spec, handle)
            else:
                try:
                    stage_file(db, spec, handle, options, progress, conn=conn)
                    reconcile_import(db, spec, handle, conn=conn)
                    result = _confirm_and_load(db, spec, handle, options, conn)
                except HistimportError as exc:
                    if not exc.terminal:
                        raise
                    result = ImportResult(
                        import_id=handle.import_id,
                        dataset=spec.name,
                        status=ImportStatus.FAILED,
                        file_name=handle.file_name,
                        sha256=handle.sha256,
                        error_message=str(exc),
                    )
        finally:
            outer.rollback()
    return replace(result, dry_run=True)
