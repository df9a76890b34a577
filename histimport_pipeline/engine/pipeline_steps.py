"""What every step of an import records on it: taking it over and releasing it, its start
and its claim on the file's content (waiting for a live holder), and its attempts' time.

The step functions themselves live in ``engine.pipeline``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.errors import ContentBusyError, FileError
from histimport_pipeline.engine.models import (
    AuditAction,
    FileInfo,
    FileStatus,
    ImportPhase,
    ImportStatus,
)
from histimport_pipeline.engine.pipeline_records import ImportHandle, ImportOptions, OnWait
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning
from histimport_pipeline.engine.tracking import corrections
from histimport_pipeline.engine.tracking.drift import detect_drift

#: Seconds between two looks at that other import while waiting.
HOLDER_POLL_S = 1.0


@contextmanager
def in_tx(db: Database, conn: sa.Connection | None) -> Iterator[sa.Connection]:
    """A transaction of its own, or the caller's (dry run: everything in one, rolled back)."""
    if conn is not None:
        yield conn
        return
    with db.engine.begin() as own:
        yield own


#: Set while ``run_import`` runs every step in this process: the worker stays recorded
#: between steps, so a kill between them is seen at once (by the process id).
all_steps_here: ContextVar[bool] = ContextVar("histimport_all_steps_here", default=False)


def release(tx: sa.Connection, db: Database, import_id: int) -> None:
    """A step called on its own ended: no process works on the import until the next step
    takes it over (perhaps in another process), so its liveness is its heartbeat's age."""
    if all_steps_here.get():
        tracking.update_import(tx, db, import_id, heartbeat_at=tracking.utcnow())
        return
    tracking.update_import(tx, db, import_id, worker=None, heartbeat_at=tracking.utcnow())


def take_over(db: Database, handle: ImportHandle, conn: sa.Connection | None) -> None:
    """Record this process as the import's worker: steps may run in different processes.

    Taking over a failed import (a retried or re-executed step) starts a new attempt: the
    audit entry ``resumed`` records the seconds spent so far, so the wait between the
    attempts does not count as import time (see :func:`seconds_spent`).
    """
    with in_tx(db, conn) as tx:
        row = tracking.get_import(tx, db, handle.import_id) or {}
        if row.get("status") == ImportStatus.FAILED.value:
            banked, began = _attempt(tx, db, handle.import_id, row)
            # The failed attempt ended at its last sign of life: fail_import stamps the
            # heartbeat, and a process that died left its last one.
            ended = _aware(row["heartbeat_at"] or row["finished_at"] or began)
            spent = banked + max((ended - began).total_seconds(), 0.0)
            tracking.record_audit(
                tx,
                db,
                handle.import_id,
                AuditAction.RESUMED,
                None,
                {"seconds_before": round(spent, 4)},
            )
        tracking.update_import(
            tx,
            db,
            handle.import_id,
            status=ImportStatus.RUNNING.value,
            error_message=None,
            finished_at=None,
            worker=tracking.worker_id(),
            heartbeat_at=tracking.utcnow(),
        )


def record_parsed(conn: sa.Connection, db: Database, handle: ImportHandle, info: FileInfo) -> None:
    """Record what parsing detected on the import, with its schema's fingerprint and drift
    (a warning too); it moves on to validation."""
    fingerprint, drift = detect_drift(conn, db, handle.dataset, handle.import_id, info)
    warnings = list(info.warnings)
    if drift is not None:
        warnings.append(drift["message"])
    tracking.update_import(
        conn,
        db,
        handle.import_id,
        file_type=info.file_type,
        file_metadata=info.as_metadata(),
        column_mapping=info.mapping,
        warnings=warnings,
        schema_fingerprint=fingerprint,
        schema_drift=drift,
        header_present=info.header_present,
        phase=ImportPhase.VALIDATE.value,
    )


def file_business_date(spec: DatasetSpec, path: Path, options: ImportOptions) -> date | None:
    """The import's business date: the one passed, else a daily dataset's from the file name.

    Raises:
        FileError: a daily dataset's file name has no date.
    """
    name = options.file_name or path.name
    business_date = options.business_date
    if spec.partitioning is Partitioning.DAILY and business_date is None:
        business_date = spec.business_date(name)
        if business_date is None:
            raise FileError(
                path,
                f"dataset {spec.name} is daily, but the file name has no date matching "
                f"{spec.date_from_name.regex!r}",
                hint="Rename the file (e.g. signups_2024-01-31.csv) or pass the date",
            )
    return business_date


def claim_content(
    db: Database,
    spec: DatasetSpec,
    path: Path,
    options: ImportOptions,
    conn: sa.Connection | None,
    on_wait: OnWait | None,
    sha: str,
    size: int,
    business_date: date | None,
) -> tuple[ImportHandle, ContentBusyError | None]:
    """Record the new import and claim its content, waiting for a live holder first (not
    inside a caller's transaction; see ``pipeline.start_import``).

    Returns:
        The handle (``duplicate_of`` set when the content was imported already), and the
        error to raise when the holder still ran after the wait (the refusal is recorded
        and committed).
    """
    busy: ContentBusyError | None = None
    t0 = time.monotonic()
    deadline = t0 + options.wait_for_holder_s
    while True:
        if conn is None:
            _wait_for_holder(db, spec, sha, options, on_wait, deadline)
        try:
            with in_tx(db, conn) as tx:
                handle, claim = _record_start(tx, db, spec, path, options, sha, size, business_date)
                import_id = handle.import_id
                if not claim.claimed and claim.holder_status == FileStatus.PROCESSING.value:
                    assert claim.holder_import_id is not None
                    if conn is None and time.monotonic() < deadline:
                        # The holder claimed it after we looked: this attempt is rolled
                        # back, and the next one waits for the holder first.
                        raise _HolderAppeared
                    waited = time.monotonic() - t0
                    busy = ContentBusyError(import_id, claim.holder_import_id, waited)
                    _record_refusal(tx, db, busy, options)
                elif not claim.claimed:
                    return _record_duplicate(tx, db, handle, claim, options), None
                elif not load.loads_directly(db, spec):
                    load.create_staging(tx, db, spec, import_id)
        except _HolderAppeared:
            time.sleep(min(HOLDER_POLL_S, max(0.0, deadline - time.monotonic())))
            continue
        break
    return handle, busy


def _record_start(
    tx: sa.Connection,
    db: Database,
    spec: DatasetSpec,
    path: Path,
    options: ImportOptions,
    sha: str,
    size: int,
    business_date: date | None,
) -> tuple[ImportHandle, tracking.Claim]:
    """The new import's history row and its claim on the content, in ``tx``.

    Long because: the history row names every column a new import starts with, one per line,
    and the two audit entries and the claim must commit with it.
    """
    name = options.file_name or path.name
    corrects = corrections.failure_to_correct(
        tx, db, dataset=spec.name, file_name=name, business_date=business_date, sha256=sha
    )
    import_id = tracking.create_import(
        tx,
        db,
        dataset=spec.name,
        target_table=spec.target_table,
        import_type=options.import_type.value,
        source=options.source.value,
        partition_key=options.partition_key,
        business_date=business_date,
        dagster_run_id=options.dagster_run_id,
        file_name=name,
        file_path=str(path.resolve()),
        file_size=size,
        file_sha256=sha,
        strategy=spec.strategy.value,
        spec_used=spec.model_dump(mode="json", exclude_unset=True),
        status=ImportStatus.RUNNING.value,
        phase=ImportPhase.PARSE.value,
        forced=options.force,
        retry_of=options.retry_of,
        corrects_import_id=corrects,
        triggered_by=options.user,
        user_id=options.user,
        user_email=options.user_email,
        worker=tracking.worker_id(),
        heartbeat_at=tracking.utcnow(),
        started_at=tracking.utcnow(),
    )
    tracking.record_audit(
        tx,
        db,
        import_id,
        AuditAction.FILE_RECEIVED,
        options.user,
        {
            "file": name,
            "path": str(path.resolve()),
            "size": size,
            "sha256": sha,
            "source": options.source.value,
        },
    )
    tracking.record_audit(
        tx,
        db,
        import_id,
        AuditAction.STARTED,
        options.user,
        {
            "file": name,
            "sha256": sha,
            "force": options.force,
            "dry_run": options.dry_run,
            **({"corrects_import_id": corrects} if corrects is not None else {}),
        },
    )
    claim = tracking.claim_file(
        tx,
        db,
        dataset=spec.name,
        sha256=sha,
        file_name=name,
        file_size=size,
        import_id=import_id,
        force=options.force,
    )
    handle = ImportHandle(
        import_id=import_id,
        dataset=spec.name,
        file_path=str(path),
        file_name=name,
        sha256=sha,
        file_size=size,
        business_date=business_date,
    )
    return handle, claim


def _record_refusal(
    tx: sa.Connection, db: Database, busy: ContentBusyError, options: ImportOptions
) -> None:
    """End an import that found its content held by another live import: failed."""
    tracking.update_import(
        tx,
        db,
        busy.import_id,
        status=ImportStatus.FAILED.value,
        error_message=str(busy),
        finished_at=tracking.utcnow(),
        worker=None,
    )
    tracking.record_nothing_loaded(tx, db, busy.import_id)
    tracking.record_audit(
        tx,
        db,
        busy.import_id,
        AuditAction.FAILED,
        options.user,
        {"reason": "content busy", "holder_import_id": busy.holder_import_id},
    )


def _record_duplicate(
    tx: sa.Connection,
    db: Database,
    handle: ImportHandle,
    claim: tracking.Claim,
    options: ImportOptions,
) -> ImportHandle:
    """End an import whose content was imported already: duplicate, nothing loaded."""
    message = (
        f"this content was already imported by import {claim.holder_import_id} "
        f"({claim.holder_status}); nothing loaded. Use --force to import it again"
    )
    tracking.update_import(
        tx,
        db,
        handle.import_id,
        status=ImportStatus.DUPLICATE.value,
        phase=ImportPhase.COMPLETE.value,
        error_message=message,
        finished_at=tracking.utcnow(),
    )
    tracking.record_nothing_loaded(tx, db, handle.import_id)
    tracking.record_audit(
        tx,
        db,
        handle.import_id,
        AuditAction.DUPLICATE,
        options.user,
        {"holder_import_id": claim.holder_import_id},
    )
    return replace(handle, duplicate_of=claim.holder_import_id)


class _HolderAppeared(Exception):
    """Another import claimed the content between the look for one and this claim."""


def _wait_for_holder(
    db: Database,
    spec: DatasetSpec,
    sha: str,
    options: ImportOptions,
    on_wait: OnWait | None,
    deadline: float,
) -> None:
    """Fail the dataset's dead imports; then, while a live import holds this content, wait
    for it to end (until ``deadline``, a ``time.monotonic()`` instant), failing dead ones at
    each look."""
    announced: int | None = None
    while True:
        tracking.fail_dead_imports(db, spec.name, stale_after=options.stale_after)
        holder = None if options.force else tracking.running_holder(db, spec.name, sha)
        now = time.monotonic()
        if holder is None or now >= deadline:
            return
        if on_wait is not None and holder != announced:
            on_wait(holder)
        announced = holder
        time.sleep(min(HOLDER_POLL_S, deadline - now))


def _attempt(
    conn: sa.Connection, db: Database, import_id: int, row: dict[str, Any]
) -> tuple[float, datetime]:
    """Seconds spent in the import's earlier attempts, and when the current one began."""
    t = db.tables.import_audit_trail
    resumed = conn.execute(
        sa.select(t.c.created_at, t.c.details)
        .where(t.c.import_id == import_id, t.c.action == AuditAction.RESUMED.value)
        .order_by(t.c.audit_id.desc())
        .limit(1)
    ).first()
    if resumed is None:
        return 0.0, _aware(row["started_at"])
    return float((resumed.details or {}).get("seconds_before") or 0.0), _aware(resumed.created_at)


def seconds_spent(
    conn: sa.Connection, db: Database, import_id: int, row: dict[str, Any], now: datetime
) -> float:
    """Seconds the import's attempts took up to ``now``: the earlier attempts' time plus the
    current one's, without the waits between them (a re-execution may come days later)."""
    banked, began = _attempt(conn, db, import_id, row)
    return banked + max((now - began).total_seconds(), 0.0)


def _aware(stamp: Any) -> Any:
    from datetime import UTC

    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
