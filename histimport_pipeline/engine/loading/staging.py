"""The stage step's work: read the file (columnar reader, else the Python reader), validate
it, stage the valid rows and record the failed ones, batch by batch.

Delimited UTF-8 files on PostgreSQL are read by the columnar reader (pyarrow; see
``engine.reading.columnar``), every other file, and any file that reader declines part-way,
by the Python reader; the outcome is the same. Memory stays bounded: rows flow through in
batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from histimport_pipeline.engine import failpoints, tracking
from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.digest import file_digest
from histimport_pipeline.engine.errors import FileChangedError
from histimport_pipeline.engine.loading.memory import fewer_collections
from histimport_pipeline.engine.loading.sinks import (
    IntoTarget,
    StagingSink,
    TargetSink,
    target_constants,
)
from histimport_pipeline.engine.models import (
    AuditAction,
    FileInfo,
    ImportPhase,
    RawRow,
    RowError,
)
from histimport_pipeline.engine.pipeline_records import (
    ImportHandle,
    ImportOptions,
    Progress,
    StageResult,
)
from histimport_pipeline.engine.pipeline_steps import in_tx, record_parsed, release, take_over
from histimport_pipeline.engine.reading import columnar, open_file
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.validation import Validator

T = TypeVar("T")
#: Seconds between heartbeats written while a file is staged.
HEARTBEAT_EVERY_S = 5.0


def stage(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    options: ImportOptions,
    progress: Progress | None,
    conn: sa.Connection | None,
    into: IntoTarget | None = None,
    restarted: str | None = None,
) -> StageResult:
    """``pipeline.stage_file``; with ``into``, a direct load's valid rows are COPYed into the
    target (uncommitted, on ``into.conn``) as they are checked, and ``rows_staged`` counts
    them. ``restarted`` says why the rows are checked a second time (the audit trail's
    ``validation_started`` entry carries it)."""
    take_over(db, handle, conn)
    path = Path(handle.file_path)
    t0 = time.perf_counter()
    with open_file(
        path, spec, batch_size=options.batch_size, max_field_bytes=options.max_field_bytes
    ) as parsed:
        info = parsed.info
    columnar_plan, note = _columnar_plan(db, spec, info, path, options)
    parse_seconds = time.perf_counter() - t0
    reader = "python" if columnar_plan is None else "columnar"
    _record_parse(db, handle, info, reader, restarted, conn)
    # A caller's transaction (a dry run) is seen by no one: no progress for it.
    writer = tracking.ProgressWriter(
        db, handle.import_id, options.progress_every_s, enabled=conn is None
    )
    writer.start(ImportPhase.VALIDATE, None)
    # ``into``: run_import's one pass (``loads_in_one_pass``), keyed appends included.
    direct = columnar_plan is not None and (into is not None or load.loads_directly(db, spec))
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
                writer,
            )
        except columnar.Declined as declined:
            note = f"columnar reader declined: {declined.reason}"
            direct = False
    if staged is None:
        staged = _stage_python(db, spec, handle, options, progress, conn, writer)
    staged.seconds["parse"] += parse_seconds
    _index_staged(db, spec, handle, staged, direct, conn)
    result = StageResult(
        rows_read=staged.read,
        rows_staged=staged.valid,
        rows_failed=staged.failed,
        rows_duplicate=staged.duplicates,
        seconds={k: round(v, 4) for k, v in staged.seconds.items()},
        warnings=tuple(info.warnings),
        into_target=staged.into_target,
    )
    _record_staged(db, handle, info, staged, result, direct, note, conn)
    return result


def _record_parse(
    db: Database,
    handle: ImportHandle,
    info: FileInfo,
    reader: str,
    restarted: str | None,
    conn: sa.Connection | None,
) -> None:
    """The file's detected layout on the import, and the audit entries of the parse and of
    the validation that starts (with why it starts again, if it does)."""
    with in_tx(db, conn) as tx:
        record_parsed(tx, db, handle, info)
        tracking.record_audit(
            tx,
            db,
            handle.import_id,
            AuditAction.PARSED,
            None,
            {**info.as_metadata(), "file_type": info.file_type},
        )
        started: dict[str, Any] = {"reader": reader}
        if restarted:
            started["restarted"] = restarted
        tracking.record_audit(
            tx, db, handle.import_id, AuditAction.VALIDATION_STARTED, None, started
        )


def _index_staged(
    db: Database,
    spec: DatasetSpec,
    handle: ImportHandle,
    staged: _Staged,
    direct: bool,
    conn: sa.Connection | None,
) -> None:
    """Index the staging table and move in-file duplicate keys to the failed rows (or, for a
    direct load, drop the table: nothing was staged)."""
    with in_tx(db, conn) as tx:
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


def _record_staged(
    db: Database,
    handle: ImportHandle,
    info: FileInfo,
    staged: _Staged,
    result: StageResult,
    direct: bool,
    note: str | None,
    conn: sa.Connection | None,
) -> None:
    """The stage step's counts and reader on the import, which moves on to reconciliation."""
    reader = "python" if staged.reader_python else "columnar"
    with in_tx(db, conn) as tx:
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
            # The progress of the phase it moves on to: none of the checked rows yet.
            rows_done=0,
            rows_expected=staged.valid,
            progress_percent=tracking.percent(0, staged.valid),
            progress_updated_at=tracking.utcnow(),
        )
        release(tx, db, handle.import_id)
        details: dict[str, Any] = {
            "rows_read": staged.read,
            "rows_valid": staged.valid,
            "rows_failed": staged.failed,
            "rows_duplicate": staged.duplicates,
            "reader": reader,
            "staged": not direct,
        }
        if staged.into_target:
            details["streamed_into_target"] = True
        if note:
            details["reader_note"] = note
        tracking.record_audit(tx, db, handle.import_id, AuditAction.VALIDATED, None, details)


@dataclass
class _Staged:
    """Running counts and seconds of the stage step."""

    reader_python: bool
    #: Writes the import's live progress.
    writer: tracking.ProgressWriter
    #: The file's size, for the estimate of its rows.
    file_size: int
    #: The valid rows went straight into the target (``IntoTarget``).
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
    with in_tx(db, conn) as tx:
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
    writer: tracking.ProgressWriter,
) -> _Staged:
    """The Python reader: parse, validate and stage batch by batch (one transaction each)."""
    _reset_staging(db, spec, handle.import_id, conn, create=True)
    staged = _Staged(reader_python=True, writer=writer, file_size=handle.file_size)
    seconds = staged.seconds
    t0 = time.perf_counter()
    with (
        open_file(
            Path(handle.file_path),
            spec,
            batch_size=options.batch_size,
            max_field_bytes=options.max_field_bytes,
        ) as parsed,
        fewer_collections(),
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
            with in_tx(db, conn) as tx:
                load.stage_rows(tx, db, spec, handle.import_id, outcome.valid)
                _record_batch(tx, db, handle, headers, staged, outcome.failed + outcome.duplicates)
            seconds["stage"] += time.perf_counter() - t2
            _batch_done(staged, progress, parsed.bytes_read)
    # This reader does not hash what it reads (the columnar one does): the file is hashed
    # again once read, so that rows of another content than the one recorded never load.
    if file_digest(Path(handle.file_path))[0] != handle.sha256:
        raise FileChangedError(handle.file_path, handle.import_id, "the file's content changed")
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


def _batch_done(staged: _Staged, progress: Progress | None, bytes_read: int | None) -> None:
    """A batch (or block) is checked and staged: the import's progress, then the CLI's."""
    expected = tracking.estimate_rows(staged.read, bytes_read, staged.file_size)
    staged.writer.rows(staged.read, expected)
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
    into: IntoTarget | None,
    writer: tracking.ProgressWriter,
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
    staged = _Staged(
        reader_python=False,
        writer=writer,
        file_size=handle.file_size,
        into_target=into is not None,
    )
    seconds = staged.seconds
    reader = columnar.ColumnarFile(
        Path(handle.file_path),
        spec,
        info,
        Validator(spec, detect_duplicates=False),
        has_quotes=quoting.has_quotes,
        encode=not direct or into is not None,
        constants=target_constants(into.table, handle) if into is not None else (),
        max_field_bytes=options.max_field_bytes,
    )
    with ExitStack() as stack:
        stack.enter_context(fewer_collections())
        sink: StagingSink | TargetSink | None = None
        if into is not None:
            sink = stack.enter_context(TargetSink(into))
        elif not direct:
            sink = stack.enter_context(StagingSink(db, spec, handle, conn))
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
                with in_tx(db, conn) as tx:
                    _record_batch(tx, db, handle, info.headers, staged, block.failed)
            seconds["stage"] += time.perf_counter() - t1
            _batch_done(staged, progress, reader.bytes_read)
        if reader.sha256 != handle.sha256:
            raise FileChangedError(handle.file_path, handle.import_id, "the file's content changed")
        t0 = time.perf_counter()
        if sink is not None:
            sink.commit()
        seconds["stage"] += time.perf_counter() - t0
    return staged
