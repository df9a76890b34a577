"""One import, step by step: start → stage (parse + validate) → reconcile → load.

Each step is a function that the CLI calls in a row (:func:`run_import`) and the Dagster
layer calls as separate ops, passing the small :class:`ImportHandle` between them. Data
between steps lives in the import's staging table, never in memory.

Transactions: the start (history row + file claim) commits on its own so that a concurrent
attempt sees the claim; staging commits per batch; the load writes the target and every
final tracking row in one transaction. A crash anywhere leaves the whole import or nothing
in the target.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from histimport_pipeline.engine import failpoints, migrations, reconcile, tracking
from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine.db import Database, is_unavailable, unavailable_as_transient
from histimport_pipeline.engine.errors import (
    ContentBusyError,
    FileChangedError,
    FileError,
    HistimportError,
    StagingLostError,
    UnexpectedImportError,
    describe_cause,
)
from histimport_pipeline.engine.models import (
    FileInfo,
    FileStatus,
    ImportPhase,
    ImportSource,
    ImportStatus,
    ImportType,
    RawRow,
    RowError,
)
from histimport_pipeline.engine.reading import columnar, open_file
from histimport_pipeline.engine.settings import DEFAULT_MAX_FIELD_BYTES
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning, Strategy
from histimport_pipeline.engine.validation import Validator

T = TypeVar("T")

#: Seconds between heartbeats written while a file is staged.
HEARTBEAT_EVERY_S = 5.0
#: Seconds an import waits at most for another live import of the same content to end
#: (then it reports a duplicate, or loads the content if that import failed or died).
HOLDER_WAIT_S = 600.0
#: Seconds between two looks at that other import while waiting.
HOLDER_POLL_S = 1.0
#: Allocations between young garbage collections while rows stream through (Python's
#: default is 700). A batch holds tens of thousands of live tuples; at the default, the
#: collector rescans them so often that it took a third of parse and validate time.
BULK_GC_THRESHOLD = 20_000
_bulk_gc_lock = threading.Lock()
_bulk_gc_depth = 0
_bulk_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Raise the young-generation GC threshold for the duration (nesting- and thread-safe).

    Nothing escapes collection: cycles are still found, just less often; the previous
    thresholds come back when the last holder leaves.
    """
    global _bulk_gc_depth, _bulk_gc_saved
    with _bulk_gc_lock:
        if _bulk_gc_depth == 0:
            _bulk_gc_saved = gc.get_threshold()
            young, *older = _bulk_gc_saved
            gc.set_threshold(max(young, BULK_GC_THRESHOLD), *older)
        _bulk_gc_depth += 1
    try:
        yield
    finally:
        with _bulk_gc_lock:
            _bulk_gc_depth -= 1
            if _bulk_gc_depth == 0 and _bulk_gc_saved is not None:
                gc.set_threshold(*_bulk_gc_saved)
                _bulk_gc_saved = None


@dataclass(frozen=True)
class ImportOptions:
    """Per-import choices. Defaults fit a manual import from the CLI."""

    force: bool = False
    dry_run: bool = False
    import_type: ImportType = ImportType.MANUAL
    source: ImportSource = ImportSource.CLI
    triggered_by: str | None = None
    partition_key: str | None = None
    business_date: date | None = None
    dagster_run_id: str | None = None
    #: Overrides the dataset's ``max_error_ratio`` for this import.
    max_error_ratio: float | None = None
    batch_size: int = 10_000
    #: Read delimited UTF-8 files on PostgreSQL with the columnar reader when they allow it
    #: (same outcome, several times faster); off: always the Python reader.
    columnar: bool = True
    retry_of: int | None = None
    #: The name the file was dropped under, when it is read from the archive or quarantine.
    file_name: str | None = None
    #: The largest field value loaded (``HISTIMPORT_MAX_FIELD_BYTES``); larger: a row error.
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    #: How long another live import of the same content is waited for; 0: not at all (the
    #: import then ends failed with ``ContentBusyError``'s message).
    wait_for_holder_s: float = HOLDER_WAIT_S
    #: How old a heartbeat may be before its import counts as dead (see
    #: ``tracking.fail_dead_imports``).
    stale_after: timedelta = tracking.STALE_AFTER


@dataclass(frozen=True)
class ImportHandle:
    """What the steps of one import pass to each other."""

    import_id: int
    dataset: str
    file_path: str
    file_name: str
    sha256: str
    file_size: int
    business_date: date | None
    #: Set when the content was already imported: the import that holds it.
    duplicate_of: int | None = None


@dataclass(frozen=True)
class StageResult:
    """Counts and timings of the parse + validate step."""

    rows_read: int
    rows_staged: int
    rows_failed: int
    rows_duplicate: int
    seconds: dict[str, float]
    warnings: tuple[str, ...] = ()
    #: The valid rows were COPYed into the target, uncommitted (``run_import``'s one pass).
    into_target: bool = False


@dataclass(frozen=True)
class ImportResult:
    """How an import ended; also what the CLI prints and Dagster records as metadata."""

    import_id: int
    dataset: str
    status: ImportStatus
    file_name: str
    sha256: str
    rows_read: int = 0
    rows_created: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_failed: int = 0
    rows_duplicate: int = 0
    rows_deleted: int = 0
    rows_review: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    error_message: str | None = None
    warnings: tuple[str, ...] = ()
    duplicate_of: int | None = None
    dry_run: bool = False
    #: Failed rows per category and the most frequent errors (see tracking.error_summary).
    error_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the import loaded (fully or partly) or was a harmless duplicate."""
        return self.status in (ImportStatus.SUCCESS, ImportStatus.PARTIAL, ImportStatus.DUPLICATE)


Progress = Callable[[int], None]
#: Told the id of the import being waited for, each time the wait starts on a new one.
OnWait = Callable[[int], None]


def file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def ensure_schema(db: Database) -> None:
    """Make sure the tracking tables are migrated to the newest revision.

    SQLite (the embedded default) is migrated on the spot; a PostgreSQL database behind the
    code is an error, since its schema belongs to whoever runs ``histimport db upgrade``.
    """
    current, head = migrations.current(db), migrations.head()
    if current == head:
        return
    if db.dialect == "sqlite":
        migrations.upgrade(db)
        return
    raise HistimportError(
        f"the tracking tables in {db.masked_url} are at revision {current or 'none'}, this "
        f"histimport needs {head}: run `histimport db upgrade` (or have your DBA apply "
        "`histimport db sql`)"
    )


@contextmanager
def _tx(db: Database, conn: sa.Connection | None) -> Iterator[sa.Connection]:
    """A transaction of its own, or the caller's (dry run: everything in one, rolled back)."""
    if conn is not None:
        yield conn
        return
    with db.engine.begin() as own:
        yield own


def start_import(
    db: Database,
    spec: DatasetSpec,
    path: Path,
    options: ImportOptions = ImportOptions(),
    conn: sa.Connection | None = None,
    on_wait: OnWait | None = None,
) -> ImportHandle:
    """Record a new import of ``path`` and claim its content for it.

    Imports of the dataset left ``running`` by a dead worker are marked failed first (see
    ``tracking.fail_dead_imports``). While another live import holds the same content, this
    one waits for it to end, at most ``options.wait_for_holder_s`` (not inside a caller's
    transaction). When the content was already imported (and ``force`` is off) the import is
    recorded as ``duplicate`` at once and the handle says which import holds the content.

    Args:
        on_wait: called with the holder's id when the wait for it begins.

    Raises:
        FileError: the file is missing, or a daily dataset's file name has no date.
        ContentBusyError: the holder still runs after the wait; this import is recorded as
            failed with that message and nothing was loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileError(path, "no such file", hint="Check the path")
    sha, size = file_sha256(path)
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
    busy: ContentBusyError | None = None
    t0 = time.monotonic()
    deadline = t0 + options.wait_for_holder_s
    while True:
        if conn is None:
            _wait_for_holder(db, spec, sha, options, on_wait, deadline)
        try:
            with _tx(db, conn) as tx:
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
                    return _record_duplicate(tx, db, handle, claim, options)
                elif not load.loads_directly(db, spec):
                    load.create_staging(tx, db, spec, import_id)
        except _HolderAppeared:
            time.sleep(min(HOLDER_POLL_S, max(0.0, deadline - time.monotonic())))
            continue
        break
    if busy is not None:
        raise busy  # after the commit: the refused attempt stays on record
    return handle


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
    """The new import's history row and its claim on the content, in ``tx``."""
    name = options.file_name or path.name
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
        status=ImportStatus.RUNNING.value,
        phase=ImportPhase.PARSE.value,
        forced=options.force,
        retry_of=options.retry_of,
        triggered_by=options.triggered_by,
        worker=tracking.worker_id(),
        heartbeat_at=tracking.utcnow(),
        started_at=tracking.utcnow(),
    )
    tracking.record_audit(
        tx,
        db,
        import_id,
        "started",
        options.triggered_by,
        {"file": name, "sha256": sha, "force": options.force, "dry_run": options.dry_run},
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
        "failed",
        options.triggered_by,
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
        "duplicate",
        options.triggered_by,
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
    _take_over(db, handle, conn)
    with open_file(Path(handle.file_path), spec) as parsed:
        info = parsed.info
    with _tx(db, conn) as tx:
        _record_parsed(tx, db, handle.import_id, info)
        _release(tx, db, handle.import_id)
    return {**info.as_metadata(), "mapping": info.mapping, "warnings": list(info.warnings)}


def _record_parsed(conn: sa.Connection, db: Database, import_id: int, info: FileInfo) -> None:
    """Record what parsing detected on the import; it moves on to validation."""
    tracking.update_import(
        conn,
        db,
        import_id,
        file_type=info.format,
        file_metadata=info.as_metadata(),
        column_mapping=info.mapping,
        warnings=list(info.warnings),
        phase=ImportPhase.VALIDATE.value,
    )


#: Set while ``run_import`` runs every step in this process: the worker stays recorded
#: between steps, so a kill between them is seen at once (by the process id).
_all_steps_here: ContextVar[bool] = ContextVar("histimport_all_steps_here", default=False)


def _release(tx: sa.Connection, db: Database, import_id: int) -> None:
    """A step called on its own ended: no process works on the import until the next step
    takes it over (perhaps in another process), so its liveness is its heartbeat's age."""
    if _all_steps_here.get():
        tracking.update_import(tx, db, import_id, heartbeat_at=tracking.utcnow())
        return
    tracking.update_import(tx, db, import_id, worker=None, heartbeat_at=tracking.utcnow())


def _take_over(db: Database, handle: ImportHandle, conn: sa.Connection | None) -> None:
    """Record this process as the import's worker: steps may run in different processes.

    Taking over a failed import (a retried or re-executed step) starts a new attempt: the
    audit entry ``resumed`` records the seconds spent so far, so the wait between the
    attempts does not count as import time (see :func:`_seconds_spent`).
    """
    with _tx(db, conn) as tx:
        row = tracking.get_import(tx, db, handle.import_id) or {}
        if row.get("status") == ImportStatus.FAILED.value:
            banked, began = _attempt(tx, db, handle.import_id, row)
            # The failed attempt ended at its last sign of life: fail_import stamps the
            # heartbeat, and a process that died left its last one.
            ended = _aware(row["heartbeat_at"] or row["finished_at"] or began)
            spent = banked + max((ended - began).total_seconds(), 0.0)
            tracking.record_audit(
                tx, db, handle.import_id, "resumed", None, {"seconds_before": round(spent, 4)}
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
    ``engine.columnar``), every other file, and any file that reader declines part-way, by
    the Python reader; the outcome is the same. When the load will COPY the file straight
    into the target (``load.loads_directly``), the valid rows are only counted here: the load
    reads the file again. Memory stays bounded: rows flow through in batches.

    Raises:
        FileError: a file-level problem (format, encoding, headers); nothing is staged.
    """
    return _stage(db, spec, handle, options, progress, conn)


@dataclass(frozen=True)
class _IntoTarget:
    """``run_import``'s one-pass direct load: the target, and the load transaction's
    connection whose COPY the checked rows stream into."""

    conn: sa.Connection
    table: sa.Table


def _stage(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    progress: Progress | None,
    conn: sa.Connection | None,
    into: _IntoTarget | None = None,
) -> StageResult:
    """``stage_file``; with ``into``, a direct load's valid rows are COPYed into the target
    (uncommitted, on ``into.conn``) as they are checked, and ``rows_staged`` counts them."""
    _take_over(db, handle, conn)
    path = Path(handle.file_path)
    t0 = time.perf_counter()
    with open_file(
        path, spec, batch_size=options.batch_size, max_field_bytes=options.max_field_bytes
    ) as parsed:
        info = parsed.info
    columnar_plan, note = _columnar_plan(db, spec, info, path, options)
    parse_seconds = time.perf_counter() - t0
    with _tx(db, conn) as tx:
        _record_parsed(tx, db, handle.import_id, info)
        tracking.record_audit(tx, db, handle.import_id, "parsed", None, info.as_metadata())
    direct = load.loads_directly(db, spec) and columnar_plan is not None
    staged: _Staged | None = None
    if columnar_plan is not None:
        try:
            staged = _stage_columnar(
                db,
                spec,
                handle,
                info,
                columnar_plan,
                direct,
                options,
                progress,
                conn,
                into if direct else None,
            )
        except columnar.Declined as declined:
            note = f"columnar reader declined: {declined.reason}"
            direct = False
    if staged is None:
        staged = _stage_python(db, spec, handle, options, progress, conn)
    staged.seconds["parse"] += parse_seconds
    reader = "python" if staged.reader_python else "columnar"
    loaded = staged.into_target
    with _tx(db, conn) as tx:
        if direct:
            # Nothing was staged: the load reads the checked file again.
            load.drop_staging_in(tx, db, handle.import_id)
        else:
            t0 = time.perf_counter()
            load.tune_session(tx, db)
            unique = load.index_staging(tx, db, spec, handle.import_id)
            repeated = 0 if unique else load.remove_duplicate_keys(tx, db, spec, handle.import_id)
            staged.valid -= repeated
            staged.duplicates += repeated
            staged.seconds["stage"] += time.perf_counter() - t0
    result = StageResult(
        rows_read=staged.read,
        rows_staged=staged.valid,
        rows_failed=staged.failed,
        rows_duplicate=staged.duplicates,
        seconds={k: round(v, 4) for k, v in staged.seconds.items()},
        warnings=tuple(info.warnings),
        into_target=loaded,
    )
    with _tx(db, conn) as tx:
        tracking.update_import(
            tx,
            db,
            handle.import_id,
            file_metadata={**info.as_metadata(), "reader": reader, "staged": not direct},
            rows_in_file=staged.read,
            rows_processed=staged.valid,
            rows_failed=staged.failed,
            rows_duplicate=staged.duplicates,
            phase=ImportPhase.RECONCILE.value,
            phase_seconds=result.seconds,
        )
        _release(tx, db, handle.import_id)
        details: dict[str, Any] = {
            "rows_read": staged.read,
            "rows_valid": staged.valid,
            "rows_failed": staged.failed,
            "rows_duplicate": staged.duplicates,
            "reader": reader,
            "staged": not direct,
        }
        if loaded:
            details["streamed_into_target"] = True
        if note:
            details["reader_note"] = note
        tracking.record_audit(tx, db, handle.import_id, "validated", None, details)
    return result


@dataclass
class _Staged:
    """Running counts and seconds of the stage step."""

    reader_python: bool
    #: The valid rows went straight into the target (``_IntoTarget``).
    into_target: bool = False
    read: int = 0
    valid: int = 0
    failed: int = 0
    duplicates: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"parse": 0.0, "validate": 0.0, "stage": 0.0}
    )
    last_beat: float = field(default_factory=time.monotonic)

    @property
    def beat_pending(self) -> bool:
        """Whether a heartbeat is due (at most every ``HEARTBEAT_EVERY_S``)."""
        return time.monotonic() - self.last_beat > HEARTBEAT_EVERY_S

    def beat_due(self) -> bool:
        """``beat_pending``, and if so the heartbeat counts as written from now."""
        if not self.beat_pending:
            return False
        self.last_beat = time.monotonic()
        return True


def _reset_staging(
    db: Database, spec: DatasetSpec, import_id: int, conn: sa.Connection | None, *, create: bool
) -> None:
    """A clean slate for the stage step: no failed rows yet, and an empty staging table (or,
    without ``create``, none)."""
    with _tx(db, conn) as tx:
        if create:
            load.create_staging(tx, db, spec, import_id)
        else:
            load.drop_staging_in(tx, db, import_id)
        failed_rows = db.tables.import_failed_rows
        tx.execute(sa.delete(failed_rows).where(failed_rows.c.import_id == import_id))


def _columnar_plan(
    db: Database, spec: DatasetSpec, info: FileInfo, path: Path, options: ImportOptions
) -> tuple[columnar.Quoting | None, str | None]:
    """Whether the columnar reader takes the file (its quoting scan), else why not."""
    if not options.columnar:
        return None, "columnar reader switched off for this import"
    reason = columnar.decline_reason(spec, info, db.dialect)
    if reason is not None:
        return None, reason
    quoting = columnar.quoting_is_plain(
        path, info.delimiter or ",", info.quotechar or '"', options.max_field_bytes
    )
    if not quoting.plain:
        return None, f"columnar reader declined: {quoting.reason}"
    return quoting, None


def _stage_python(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    progress: Progress | None,
    conn: sa.Connection | None,
) -> _Staged:
    """The Python reader: parse, validate and stage batch by batch (one transaction each)."""
    _reset_staging(db, spec, handle.import_id, conn, create=True)
    staged = _Staged(reader_python=True)
    seconds = staged.seconds
    t0 = time.perf_counter()
    with (
        open_file(
            Path(handle.file_path),
            spec,
            batch_size=options.batch_size,
            max_field_bytes=options.max_field_bytes,
        ) as parsed,
        _fewer_collections(),
    ):
        headers = parsed.info.headers
        # In-file duplicate keys are found in the staging table: memory stays bounded.
        validator = Validator(spec, detect_duplicates=False)
        batches = parsed.batches()
        seconds["parse"] += time.perf_counter() - t0
        for batch in _timed(batches, seconds, "parse"):
            t1 = time.perf_counter()
            outcome = validator.validate_batch(batch)
            t2 = time.perf_counter()
            seconds["validate"] += t2 - t1
            staged.read += len(batch)
            staged.valid += len(outcome.valid)
            staged.failed += len(outcome.failed)
            staged.duplicates += len(outcome.duplicates)
            with _tx(db, conn) as tx:
                load.stage_rows(tx, db, spec, handle.import_id, outcome.valid)
                _record_batch(tx, db, handle, headers, staged, outcome.failed + outcome.duplicates)
            seconds["stage"] += time.perf_counter() - t2
            _batch_done(staged, progress)
    return staged


def _timed(items: Iterator[T], seconds: dict[str, float], phase: str) -> Iterator[T]:
    """``items``, the time spent producing each added to ``seconds[phase]``."""
    while True:
        t0 = time.perf_counter()
        item = next(items, None)
        seconds[phase] += time.perf_counter() - t0
        if item is None:
            return
        yield item


def _record_batch(
    tx: sa.Connection,
    db: Database,
    handle: ImportHandle,
    headers: Sequence[str],
    staged: _Staged,
    failures: Sequence[tuple[RawRow, RowError]],
) -> None:
    """A batch's failed rows, and the import's heartbeat when one is due."""
    tracking.write_failed_rows(tx, db, handle.import_id, headers, failures)
    if staged.beat_due():
        tracking.update_import(
            tx, db, handle.import_id, heartbeat_at=tracking.utcnow(), rows_in_file=staged.read
        )


def _batch_done(staged: _Staged, progress: Progress | None) -> None:
    failpoints.checkpoint("staging")
    if progress is not None:
        progress(staged.read)


def _stage_columnar(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    info: FileInfo,
    quoting: columnar.Quoting,
    direct: bool,
    options: ImportOptions,
    progress: Progress | None,
    conn: sa.Connection | None,
    into: _IntoTarget | None = None,
) -> _Staged:
    """The columnar reader: validate block by block; unless ``direct``, COPY the valid rows
    into the staging table as one stream (its own transaction, committed at the end), or with
    ``into`` into the target (the caller commits), the failed rows going in transactions of
    their own meanwhile.

    Raises:
        columnar.Declined: the file needs the Python reader; nothing of this attempt is kept
            (the caller's Python pass starts from a clean slate).
    """
    _reset_staging(db, spec, handle.import_id, conn, create=not direct)
    staged = _Staged(reader_python=False, into_target=into is not None)
    seconds = staged.seconds
    reader = columnar.ColumnarFile(
        Path(handle.file_path),
        spec,
        info,
        Validator(spec, detect_duplicates=False),
        has_quotes=quoting.has_quotes,
        encode=not direct or into is not None,
        constants=_target_constants(into.table, handle) if into is not None else (),
        max_field_bytes=options.max_field_bytes,
    )
    with ExitStack() as stack:
        stack.enter_context(_fewer_collections())
        sink: _StagingSink | _TargetSink | None = None
        if into is not None:
            sink = stack.enter_context(_TargetSink(into))
        elif not direct:
            sink = stack.enter_context(_StagingSink(db, spec, handle, conn))
        for block in _timed(reader.blocks(), seconds, "validate"):
            t1 = time.perf_counter()
            if sink is not None and block.payload is not None:
                assert reader.copy_columns is not None
                sink.write(reader.copy_columns, block.payload)
            staged.read += block.records
            staged.valid += block.valid
            staged.failed += len(block.failed)
            # Most blocks of a clean file have no failed row: no transaction for nothing.
            if block.failed or staged.beat_pending:
                with _tx(db, conn) as tx:
                    _record_batch(tx, db, handle, info.headers, staged, block.failed)
            seconds["stage"] += time.perf_counter() - t1
            _batch_done(staged, progress)
        if reader.sha256 != handle.sha256:
            raise FileChangedError(handle.file_path, handle.import_id, "the file's content changed")
        t0 = time.perf_counter()
        if sink is not None:
            sink.commit()
        seconds["stage"] += time.perf_counter() - t0
    return staged


class _StagingSink:
    """One binary COPY into an import's staging table, fed block by block.

    Without a caller's connection it runs on a connection of its own, so that failed rows can
    be written meanwhile, and commits at the end; inside a dry run (the caller's connection)
    each block is a COPY of its own.
    """

    def __init__(
        self, db: Database, spec: DatasetSpec, handle: ImportHandle, conn: sa.Connection | None
    ) -> None:
        self._db = db
        self._outer = conn
        self._stack = ExitStack()
        self._pump: columnar.CopyPump | None = None
        self._table = load.staging_name(handle.import_id)

    def __enter__(self) -> _StagingSink:
        return self

    def write(self, columns: Sequence[str], payload: memoryview) -> None:
        """Send one block of binary COPY tuples with these columns."""
        if self._outer is not None:
            raw = self._outer.connection.driver_connection
            sql = self._sql(self._outer, columns)
            with (
                columnar.quiet_copy_abort(),
                raw.cursor() as cur,  # type: ignore[union-attr]
                cur.copy(sql) as copy,
            ):
                copy.write(columnar.COPY_HEADER)
                copy.write(payload)
                copy.write(columnar.COPY_TRAILER)
            return
        if self._pump is None:
            own = self._stack.enter_context(self._db.engine.connect())
            self._stack.enter_context(own.begin())
            self._pump = _start_copy(self._stack, own, self._sql(own, columns))
        self._pump.put(payload)

    def _sql(self, conn: sa.Connection, columns: Sequence[str]) -> str:
        table = load.qualified_name(conn, self._db.schema or "public", self._table)
        return columnar.copy_sql(conn.dialect.identifier_preparer, table, columns)

    def commit(self) -> None:
        """Finish the COPY and commit it."""
        self._pump = None
        self._stack.close()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # With an exception: the pump stops, psycopg aborts the COPY, the transaction rolls
        # back. (After commit() the stack is empty.)
        self._stack.__exit__(exc_type, exc, tb)


def _start_copy(stack: ExitStack, conn: sa.Connection, sql: str) -> columnar.CopyPump:
    """Open ``sql`` (a ``COPY ... FROM STDIN``) on ``conn`` with a pump feeding it; ``stack``
    ends them (the COPY aborts when it is left with an exception)."""
    raw: Any = conn.connection.driver_connection
    stack.enter_context(columnar.quiet_copy_abort())  # left last, after the COPY's abort
    cursor = stack.enter_context(raw.cursor())
    copy = stack.enter_context(cursor.copy(sql))
    return stack.enter_context(columnar.CopyPump(copy))


class _TargetSink:
    """One binary COPY into the target on the load transaction's connection, fed by a thread;
    ``commit`` ends the COPY (the caller commits the transaction)."""

    def __init__(self, into: _IntoTarget) -> None:
        self._into = into
        self._stack = ExitStack()
        self._pump: columnar.CopyPump | None = None

    def __enter__(self) -> _TargetSink:
        return self

    def write(self, columns: Sequence[str], payload: memoryview) -> None:
        """Send one block of binary COPY tuples with these columns."""
        if self._pump is None:
            conn = self._into.conn
            table = load.qualified_name(conn, None, self._into.table.name)
            sql = columnar.copy_sql(conn.dialect.identifier_preparer, table, columns)
            self._pump = _start_copy(self._stack, conn, sql)
        self._pump.put(payload)
        failpoints.checkpoint("copy")

    def commit(self) -> None:
        """Finish the COPY."""
        self._pump = None
        self._stack.close()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._stack.__exit__(exc_type, exc, tb)


def _target_constants(target: sa.Table, handle: ImportHandle) -> list[columnar.Constant]:
    """The system columns a direct load writes with one value per import."""
    constants = [columnar.Constant("_import_id", handle.import_id)]
    if "_business_date" in target.c:
        constants.append(columnar.Constant("_business_date", handle.business_date))
    return constants


def reconcile_import(
    db: Database, spec: DatasetSpec, handle: ImportHandle, conn: sa.Connection | None = None
) -> dict[str, Any]:
    """Resolve the dataset's entity references in the staged rows.

    A dataset without ``references`` passes through untouched.

    Returns:
        Counts of the reconciliation (empty when there is nothing to reconcile).
    """
    if not spec.references:
        with _tx(db, conn) as tx:
            tracking.update_import(tx, db, handle.import_id, phase=ImportPhase.CONFIRM.value)
        return {}
    _take_over(db, handle, conn)
    t0 = time.perf_counter()
    with _tx(db, conn) as tx:
        row = tracking.get_import(tx, db, handle.import_id) or {}
        outcome = reconcile.reconcile_staged(tx, db, spec, handle.import_id)
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
        )
        _release(tx, db, handle.import_id)
        tracking.record_audit(
            tx,
            db,
            handle.import_id,
            "reconciled",
            None,
            {
                "matches": outcome.matches,
                "comparisons": outcome.comparisons,
                "rows_review": outcome.rows_review,
                "rows_rejected": outcome.rows_rejected,
                "rows_without_id": outcome.rows_without_id,
            },
        )
    return {
        "rows_waiting_for_review": outcome.rows_review,
        "rows_rejected_by_reconciliation": outcome.rows_rejected,
        "rows_loaded_without_id": sum(outcome.rows_without_id.values()),
        "comparisons": outcome.comparisons,
        **{f"matches_{k}": v for k, v in outcome.matches.items()},
    }


def _check_staging(
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


def _direct_write(
    tx: sa.Connection, spec: DatasetSpec, handle: ImportHandle, row: dict[str, Any]
) -> load.DirectWrite:
    """The load of an import that staged nothing: read the checked file again with the
    columnar reader and COPY its valid rows straight into the target, in ``tx``.

    The file must be the one validated (same SHA-256, hashed as it streams) and give the same
    counts, else the write is refused and the transaction rolls back; its failed rows were
    recorded by the validate step and are skipped here.
    """

    def write(target: sa.Table) -> int:
        path = Path(handle.file_path)
        if not path.is_file():
            raise FileChangedError(path, handle.import_id, "the file is gone")
        with open_file(path, spec) as parsed:
            info = parsed.info
        quoting = columnar.quoting_is_plain(path, info.delimiter or ",", info.quotechar or '"')
        constants = _target_constants(target, handle)
        reader = columnar.ColumnarFile(
            path,
            spec,
            info,
            Validator(spec, detect_duplicates=False),
            has_quotes=quoting.has_quotes,
            encode=True,
            constants=constants,
            # The validate step read this very file (its hash is checked) within the limit.
            max_field_bytes=None,
        )
        read = written = failed = 0
        with _TargetSink(_IntoTarget(tx, target)) as sink:
            try:
                for block in reader.blocks():
                    read += block.records
                    failed += len(block.failed)
                    if block.payload is None:
                        continue
                    assert reader.copy_columns is not None
                    sink.write(reader.copy_columns, block.payload)
                    written += block.valid
            except columnar.Declined as declined:
                raise FileChangedError(
                    path, handle.import_id, f"the file no longer reads as before ({declined})"
                ) from None
            # Checked after the stream, before the commit: a mismatch rolls everything back.
            if reader.sha256 != handle.sha256:
                raise FileChangedError(path, handle.import_id, "the file's content changed")
            sink.commit()
        expected = (int(row["rows_in_file"] or 0), int(row["rows_processed"] or 0))
        if (read, written) != expected or failed != read - written:
            raise FileChangedError(
                path,
                handle.import_id,
                f"the file now gives {read:,} rows ({written:,} valid), not {expected[0]:,} "
                f"({expected[1]:,} valid) as",
            )
        return written

    return write


def _gate(spec: DatasetSpec, options: ImportOptions) -> float:
    """The largest share of failed rows an import may have and still load."""
    return spec.max_error_ratio if options.max_error_ratio is None else options.max_error_ratio


def load_import(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions = ImportOptions(),
    conn: sa.Connection | None = None,
    *,
    streamed: tuple[sa.Table, int] | None = None,
) -> ImportResult:
    """Apply the error gate, then write the target and the final tracking rows atomically.

    Over the gate (failed share above ``max_error_ratio``) the import ends ``rejected`` and
    nothing is written to the target.

    Args:
        streamed: the target and the rows already in it, uncommitted in ``conn``'s
            transaction (``run_import``'s one-pass direct load): only the tracking rows are
            written.
    """
    _take_over(db, handle, conn)
    t0 = time.perf_counter()
    with _tx(db, conn) as tx:
        load.tune_session(tx, db)
        row = tracking.get_import(tx, db, handle.import_id)
        if row is None:
            raise HistimportError(f"import {handle.import_id} vanished from import_history")
        seconds: dict[str, float] = dict(row["phase_seconds"] or {})
        read = int(row["rows_in_file"] or 0)
        failed = int(row["rows_failed"] or 0)
        duplicates = int(row["rows_duplicate"] or 0)
        review = int(row["rows_review"] or 0)
        warnings = list(row["warnings"] or [])
        gate = _gate(spec, options)
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
        }
        if share > gate:
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
            masters_deleted = reconcile.drop_created_masters(tx, db, handle.import_id)
            _finish(
                tx,
                db,
                spec,
                handle,
                ImportStatus.REJECTED,
                ImportPhase.CONFIRM,
                seconds,
                row,
                error_message=message,
                warnings=warnings,
            )
            tracking.record_nothing_loaded(tx, db, handle.import_id)
            tracking.record_audit(
                tx,
                db,
                handle.import_id,
                "rejected",
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
                warnings=tuple(warnings),
                **base,
            )
        metadata = row["file_metadata"] or {}
        direct: load.DirectWrite | None = None
        target: sa.Table | None = None
        staged_rows: int | None = None
        if streamed is not None:
            target, written = streamed
            direct = lambda _target: written  # noqa: E731 - written while validating
        elif metadata.get("staged", True):
            expected = int(row["rows_processed"] or 0)
            staged_rows = _check_staging(tx, db, spec, handle.import_id, expected)
        elif load.loads_directly(db, spec):
            direct = _direct_write(tx, spec, handle, row)
        else:
            raise StagingLostError(handle.import_id, int(row["rows_processed"] or 0), 0)
        tracking.record_audit(
            tx,
            db,
            handle.import_id,
            "confirmed",
            None,
            {"failed_share": round(share, 4), "gate": gate},
        )
        tracking.update_import(tx, db, handle.import_id, phase=ImportPhase.LOAD.value)
        if spec.strategy.value == "append" and spec.key:
            duplicates += load.record_append_conflicts(tx, db, spec, handle.import_id)
        counts = load.write_target(
            tx,
            db,
            spec,
            handle.import_id,
            handle.business_date,
            direct=direct,
            target=target,
            staged_rows=staged_rows,
        )
        failpoints.checkpoint("write")
        seconds["load"] = round(time.perf_counter() - t0, 4)
        status = ImportStatus.PARTIAL if failed or duplicates or review else ImportStatus.SUCCESS
        if review:
            warnings.append(
                f"{review} rows wait for a reconciliation decision: see `histimport review list "
                f"--import {handle.import_id}`, then `histimport review apply {handle.import_id}`"
            )
        if read == 0:
            warnings.append("the file has no data rows")
        _finish(
            tx,
            db,
            spec,
            handle,
            status,
            ImportPhase.COMPLETE,
            seconds,
            row,
            warnings=warnings,
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
            "loaded",
            None,
            {
                "created": counts.created,
                "updated": counts.updated,
                "unchanged": counts.unchanged,
                "deleted": counts.deleted,
                "strategy": spec.strategy.value,
            },
        )
        tracking.record_audit(tx, db, handle.import_id, "completed", None, {"status": status.value})
        failpoints.checkpoint("commit")
        base["rows_duplicate"] = duplicates
        return ImportResult(
            status=status,
            rows_created=counts.created,
            rows_updated=counts.updated,
            rows_unchanged=counts.unchanged,
            rows_deleted=counts.deleted,
            phase_seconds=seconds,
            warnings=tuple(warnings),
            **base,
        )


def _finish(
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
    total = _seconds_spent(tx, db, handle.import_id, row, finished) if row["started_at"] else None
    file_status = {
        ImportStatus.SUCCESS: FileStatus.IMPORTED,
        ImportStatus.PARTIAL: FileStatus.PARTIAL,
        ImportStatus.REJECTED: FileStatus.REJECTED,
    }.get(status, FileStatus.FAILED)
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


def _attempt(
    conn: sa.Connection, db: Database, import_id: int, row: dict[str, Any]
) -> tuple[float, datetime]:
    """Seconds spent in the import's earlier attempts, and when the current one began."""
    t = db.tables.import_audit_trail
    resumed = conn.execute(
        sa.select(t.c.created_at, t.c.details)
        .where(t.c.import_id == import_id, t.c.action == "resumed")
        .order_by(t.c.audit_id.desc())
        .limit(1)
    ).first()
    if resumed is None:
        return 0.0, _aware(row["started_at"])
    return float((resumed.details or {}).get("seconds_before") or 0.0), _aware(resumed.created_at)


def _seconds_spent(
    conn: sa.Connection, db: Database, import_id: int, row: dict[str, Any], now: datetime
) -> float:
    """Seconds the import's attempts took up to ``now``: the earlier attempts' time plus the
    current one's, without the waits between them (a re-execution may come days later)."""
    banked, began = _attempt(conn, db, import_id, row)
    return banked + max((now - began).total_seconds(), 0.0)


def _aware(stamp: Any) -> Any:
    from datetime import UTC

    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


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
        tracking.record_audit(tx, db, handle.import_id, "failed", None, details)
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
) -> ImportResult:
    """Import one file from start to end.

    A dry run does everything, including the target write, inside one transaction that is
    rolled back: its counts are exactly what a real import would do, and nothing is kept.

    Args:
        on_wait: see ``start_import`` (another live import holds the same content).

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
    with unavailable_as_transient(db.engine.url), _fewer_collections():
        ensure_schema(db)
        if options.dry_run:
            return _dry_run(db, spec, Path(path), options, progress)
        try:
            handle = start_import(db, spec, Path(path), options, on_wait=on_wait)
        except ContentBusyError as busy:
            return _busy_result(spec, Path(path), options, busy)
        if handle.duplicate_of is not None:
            return _duplicate_result(spec, handle)
        all_steps_here = _all_steps_here.set(True)
        try:
            if load.loads_directly(db, spec) and spec.strategy is Strategy.APPEND:
                return _import_in_one_pass(db, spec, handle, options, progress)
            stage_file(db, spec, handle, options, progress)
            reconcile_import(db, spec, handle)
            return load_import(db, spec, handle, options)
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
            _all_steps_here.reset(all_steps_here)


def _import_in_one_pass(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    progress: Progress | None,
) -> ImportResult:
    """``run_import`` of a direct load (an append without key or references): check the rows
    and COPY them into the target in one streaming pass, in the load transaction.

    The steps are the same as ``stage_file`` + ``load_import``, and so are every tracking row
    and the outcome; what differs is that nothing waits between them, so the server writes
    the target while the next block is being checked. Over the error gate the transaction
    rolls back and the import is rejected as usual; a file the columnar reader declines is
    staged by the Python reader and loaded step by step.
    """
    with db.engine.connect() as conn, conn.begin() as transaction:
        load.tune_session(conn, db)
        target = load.ensure_target(conn, spec)
        staged = _stage(db, spec, handle, options, progress, None, _IntoTarget(conn, target))
        if staged.into_target:
            share = staged.rows_failed / staged.rows_read if staged.rows_read else 0.0
            if share <= _gate(spec, options):
                streamed = (target, staged.rows_staged)
                return load_import(db, spec, handle, options, conn, streamed=streamed)
        transaction.rollback()
    reconcile_import(db, spec, handle)
    return load_import(db, spec, handle, options)


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
    db: Database, spec: DatasetSpec, path: Path, options: ImportOptions, progress: Progress | None
) -> ImportResult:
    with db.engine.connect() as conn:
        outer = conn.begin()
        try:
            try:
                handle = start_import(db, spec, path, options, conn=conn)
            except ContentBusyError as busy:
                return _busy_result(spec, path, options, busy)
            if handle.duplicate_of is not None:
                result = _duplicate_result(spec, handle)
            else:
                try:
                    stage_file(db, spec, handle, options, progress, conn=conn)
                    reconcile_import(db, spec, handle, conn=conn)
                    result = load_import(db, spec, handle, options, conn=conn)
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
