"""Dataset assets: one per dataset spec, materialized by five ops (parse, validate,
reconcile, confirm, load) that pass a small import handle and keep the rows in staging
tables.

Long because: the asset factory and its five ops close over one spec and share the failure
handling; splitting the ops into modules of their own is the next step of the layout work.
"""

import datetime as dt
import getpass
import inspect
import math
from pathlib import Path
from typing import Any, NoReturn

import dagster as dg

from histimport_pipeline.engine import files, pipeline, tracking
from histimport_pipeline.engine.errors import FileError, HistimportError
from histimport_pipeline.engine.loading.targets import count_rows
from histimport_pipeline.engine.models import ImportSource, ImportStatus, ImportType
from histimport_pipeline.engine.pipeline import ImportHandle, ImportOptions, ImportResult
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import ColumnType, DatasetSpec, Partitioning, load_specs
from histimport_pipeline.engine.tracking import corrections, failed_rows
from histimport_pipeline.orchestration.checks import check_evaluations, top_errors_table
from histimport_pipeline.orchestration.partitions import dataset_partitions, file_partitions_name
from histimport_pipeline.orchestration.resources import DatabaseResource
from histimport_pipeline.orchestration.run_coordinator import DATASET_TAG, TRIGGER_TAG, missing_tags

#: Transient errors (database unreachable) are retried; terminal ones fail at once.
RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL)
FILE_TAG = "histimport/file"


class ImportConfig(dg.Config):
    """Per-run options of an import."""

    path: str | None = None
    force: bool = False
    max_error_ratio: float | None = None


def master_key(entity: str) -> dg.AssetKey:
    """Asset key of a master table that datasets reconcile against."""
    return dg.AssetKey(["masters", entity])


def inbox_key(spec: DatasetSpec) -> dg.AssetKey:
    """Asset key of a dataset's inbox (the files dropped for it)."""
    return dg.AssetKey(["inbox", spec.name])


def external_assets(specs: dict[str, DatasetSpec]) -> list[dg.AssetSpec]:
    """The inboxes and master tables: upstream of the datasets, not materialized here."""
    out = [
        dg.AssetSpec(
            inbox_key(spec),
            description=f"Files dropped for {spec.name} ({spec.files or spec.name + '/'}).",
            group_name="inbox",
            kinds={"file"},
        )
        for spec in specs.values()
    ]
    entities = sorted({ref.entity for s in specs.values() for ref in s.references.values()})
    out += [
        dg.AssetSpec(
            master_key(entity),
            description=f"Master table {entity} in the target database.",
            group_name="masters",
            kinds={"sql"},
        )
        for entity in entities
    ]
    return out


def _spec(name: str) -> tuple[Settings, DatasetSpec]:
    """Read the spec afresh at run time, so a fixed spec applies to a re-execution."""
    settings = Settings.from_env()
    specs = load_specs(settings.datasets)
    if name not in specs:
        raise dg.Failure(
            f"dataset spec {name!r} is no longer in {settings.datasets}", allow_retries=False
        )
    return settings, specs[name]


def _import_type(context: dg.OpExecutionContext, spec: DatasetSpec) -> ImportType:
    tags = context.run.tags
    if context.run.parent_run_id or tags.get(TRIGGER_TAG) == "retry":
        return ImportType.RETRY
    if "dagster/backfill" in tags:
        return ImportType.BACKFILL
    if spec.partitioning is Partitioning.DAILY:
        return ImportType.DAILY
    if tags.get(TRIGGER_TAG) == "sensor":
        return ImportType.DROP
    return ImportType.MANUAL


def parse_run_config(spec: DatasetSpec, path: Path | str) -> dict[str, Any]:
    """Run config that points an import run at one file (the parse op sits in the graph)."""
    return {"ops": {spec.name: {"ops": {f"{spec.name}_parse": {"config": {"path": str(path)}}}}}}


def _matches_partition(spec: DatasetSpec, name: str, path: Path, partition_key: str) -> bool:
    if spec.partitioning is Partitioning.DAILY:
        day = spec.business_date(name)
        return day is not None and day.isoformat() == partition_key
    stem = files.partition_key_for(Path(name), "0" * 12)[:-13]
    if partition_key.rsplit("-", 1)[0] != stem:
        return False  # cheap name test before hashing
    return files.partition_key_for(Path(name), files.sha256_of(path)) == partition_key


def _find_file(
    settings: Settings, spec: DatasetSpec, partition_key: str, config_path: str | None
) -> Path:
    """The file of a partition: the configured path (or its moved copy), else the file in the
    inbox, archive or quarantine whose name and content give ``partition_key``."""
    folders = (settings.archive, settings.quarantine)
    if config_path:
        path = Path(config_path)
        prefix = (
            None
            if spec.partitioning is Partitioning.DAILY
            else files.sha_prefix_of_key(partition_key)
        )
        found = files.locate(path, spec.name, prefix, *folders)
        if found is None:
            raise dg.Failure(
                f"{path} is gone from the inbox, archive and quarantine", allow_retries=False
            )
        return found
    for entry in files.dataset_candidates(settings.inbox, spec):
        if isinstance(entry, files.Entry) and _matches_partition(
            spec, entry.path.name, entry.path, partition_key
        ):
            return entry.path
    moved = sorted(
        files.moved_copies(spec.name, *folders), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    for path in moved:
        if _matches_partition(spec, files.original_name(path), path, partition_key):
            return path
    raise dg.Failure(
        f"no file for partition {partition_key} of {spec.name} in {settings.inbox} (nor in "
        "the archive or quarantine): drop the file into the inbox and re-run the partition",
        allow_retries=False,
    )


def _source(context: dg.OpExecutionContext, settings: Settings, path: Path) -> ImportSource:
    """Where the file was read from: a moved copy's folder, else how the run came about."""
    if files.is_under(path, settings.quarantine):
        return ImportSource.QUARANTINE
    if files.is_under(path, settings.archive):
        return ImportSource.ARCHIVE
    if context.run.tags.get(TRIGGER_TAG) == "schedule":
        return ImportSource.SCHEDULE
    return ImportSource.INBOX


def _tag_run(context: dg.OpExecutionContext, dataset: str, path: Path) -> None:
    """Give the run the tags a sensor's run has: the queue adds the dataset and trigger to
    runs built from an asset selection, but only the run knows which file it found."""
    tags = context.run.tags
    added = missing_tags(tags, [dg.AssetKey([dataset])], context.run.job_name)
    if FILE_TAG not in tags:
        added[FILE_TAG] = files.original_name(path)[:200]
    if added:
        context.instance.add_run_tags(context.run_id, added)


def _retry_of(context: dg.OpExecutionContext, database: DatabaseResource) -> int | None:
    """The import of the run this one re-executes (or that `retry-failed` named)."""
    tagged = context.run.tags.get("histimport/retry_of")
    if tagged and tagged.isdigit():
        return int(tagged)
    parent = context.run.parent_run_id
    if not parent:
        return None
    with database.database.reader() as conn:
        earlier = tracking.imports_of_run(conn, database.database, parent)
    return int(earlier[-1]["import_id"]) if earlier else None


def _fail(
    context: dg.OpExecutionContext,
    settings: Settings,
    spec: DatasetSpec,
    handle: ImportHandle,
    database: DatabaseResource,
    exc: BaseException,
) -> dg.Failure:
    """Record the failure; a terminal file problem moves the file to quarantine."""
    terminal = not isinstance(exc, HistimportError) or exc.terminal
    pipeline.fail_import(database.database, spec, handle, exc, keep_staging=not terminal)
    if isinstance(exc, FileError) and Path(handle.file_path).exists():
        moved = files.move_aside(
            Path(handle.file_path),
            settings.quarantine,
            spec.name,
            handle.import_id,
            {"status": "failed", "error": str(exc)},
        )
        tracking.record_file_moved(database.database, handle.import_id, moved, "quarantined")
        context.log.warning(f"moved {handle.file_name} to quarantine: {moved}")
    facts = exc.facts if isinstance(exc, HistimportError) else {}
    if terminal:
        _observe_failure(context, settings, spec, handle.import_id, str(exc), database)
    return dg.Failure(
        description=str(exc),
        metadata={"import_id": handle.import_id, **{k: str(v) for k, v in facts.items()}},
        allow_retries=not terminal,
    )


def _raise_failure(
    context: dg.OpExecutionContext,
    settings: Settings,
    spec: DatasetSpec,
    handle: ImportHandle,
    database: DatabaseResource,
    exc: BaseException,
) -> NoReturn:
    """Fail the step with the engine's sentence. A terminal error is not chained to the
    engine's exception (its traceback says nothing an operator can act on); a transient one
    keeps it for whoever debugs the retries."""
    failure = _fail(context, settings, spec, handle, database, exc)
    if failure.allow_retries:
        raise failure from exc
    raise failure from None


def failed_rows_link(settings: Settings, import_id: int, csv: Path | None) -> dg.MetadataValue:
    """Where a person gets an import's failed rows: the web history page when configured
    (HISTIMPORT_WEB_URL), else the exported CSV, else the command that writes it."""
    if settings.web_url:
        return dg.MetadataValue.url(f"{settings.web_url}/imports/{import_id}")
    if csv is not None:
        return dg.MetadataValue.path(str(csv))
    return dg.MetadataValue.text(f"histimport errors {import_id} -o errors.csv")


def _observe_failure(
    context: dg.OpExecutionContext,
    settings: Settings,
    spec: DatasetSpec,
    import_id: int,
    message: str,
    database: DatabaseResource,
    csv: Path | None = None,
) -> None:
    """Record on the asset's partition why it did not materialize: Dagster's open-source
    storage keeps no metadata on a failed materialization, so an observation carries it."""
    with database.database.reader() as conn:
        row = tracking.get_import(conn, database.database, import_id) or {}
    read = int(row.get("rows_in_file") or 0)
    failed = int(row.get("rows_failed") or 0)
    meta: dict[str, Any] = {
        "import_id": dg.MetadataValue.text(str(import_id)),
        "status": str(row.get("status") or "failed"),
        "phase": str(row.get("phase") or ""),
        "message": dg.MetadataValue.text(message),
        "rows_read": read,
        "rows_failed": failed,
        "failed_share": round(failed / read, 4) if read else 0.0,
        "failed_rows": failed_rows_link(settings, import_id, csv),
        "what_to_do": dg.MetadataValue.text(_what_to_do(spec, row)),
    }
    top = (row.get("error_summary") or {}).get("top_errors") or []
    if top:
        meta["top_errors"] = dg.MetadataValue.md(top_errors_table(top))
    context.log_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey(spec.name),
            partition=context.partition_key if context.has_partition_key else None,
            description=f"import {import_id} {meta['status']}: {message}",
            metadata=meta,
        )
    )


def _what_to_do(spec: DatasetSpec, row: dict[str, Any]) -> str:
    """The next step for an operator, by how the import ended."""
    if row.get("status") == ImportStatus.REJECTED.value:
        return rejection_hint(spec, row)
    return (
        "Fix the cause in the message and re-execute the run from failure (or re-run the "
        "partition); a file problem needs a fixed file dropped into the inbox."
    )


def rejection_hint(spec: DatasetSpec, row: dict[str, Any]) -> str:
    """What makes a rejected import load: a fixed file, or a run with a higher gate (the same
    file is rejected again by every plain retry)."""
    read = int(row.get("rows_in_file") or 0)
    failed = int(row.get("rows_failed") or 0)
    needed = math.ceil(100 * failed / read) / 100 if read else spec.max_error_ratio
    config = {
        "ops": {spec.name: {"ops": {f"{spec.name}_parse": {"config": {"max_error_ratio": needed}}}}}
    }
    return (
        "A retry of the same file is rejected again. Fix the rows (histimport errors "
        f"{row.get('import_id')} -o errors.csv) and drop the fixed file into the inbox under "
        "the same name: it supersedes this partition. Or, to load the valid rows as they are, "
        f"launch this partition with run config {config}."
    )


def _metadata(
    settings: Settings,
    spec: DatasetSpec,
    result: ImportResult,
    csv: Path | None,
    table_rows: int | None,
) -> dict[str, Any]:
    """The outcome as Dagster shows it: ``dagster/row_count`` is the table's rows after the
    import; the import's own counts have keys of their own. Values that never change between
    imports are text, so Dagster draws no flat plots of them."""
    written = result.rows_created + result.rows_updated + result.rows_unchanged
    meta: dict[str, Any] = {
        "import_id": dg.MetadataValue.text(str(result.import_id)),
        "status": result.status.value,
        "file": result.file_name,
        "sha256": result.sha256,
        "strategy": spec.strategy.value,
        "dagster/table_name": spec.target_table,
        "rows_read": result.rows_read,
        "rows_loaded": written,
        "rows_created": result.rows_created,
        "rows_updated": result.rows_updated,
        "rows_unchanged": result.rows_unchanged,
        "rows_failed": result.rows_failed,
        "rows_duplicate": result.rows_duplicate,
        "rows_waiting_for_review": result.rows_review,
        "dagster/column_schema": column_schema(spec),
    }
    if table_rows is not None:
        meta["dagster/row_count"] = table_rows
    meta |= {f"seconds_{k}": float(v) for k, v in result.phase_seconds.items()}
    top = (result.error_summary or {}).get("top_errors") or []
    if top:
        meta["top_errors"] = dg.MetadataValue.md(top_errors_table(top))
    if csv is not None:
        meta["failed_rows_csv"] = dg.MetadataValue.path(str(csv))
    if result.rows_failed or result.rows_duplicate:
        meta["failed_rows"] = failed_rows_link(settings, result.import_id, csv)
    if result.duplicate_of is not None:
        meta["duplicate_of_import"] = dg.MetadataValue.text(str(result.duplicate_of))
    return meta


_SQL_TYPES = {
    ColumnType.INTEGER: "bigint",
    ColumnType.DECIMAL: "numeric",
    ColumnType.BOOLEAN: "boolean",
    ColumnType.DATE: "date",
    ColumnType.TIMESTAMP: "timestamp",
}


def column_schema(spec: DatasetSpec) -> dg.TableSchema:
    """The target table's columns as Dagster shows them."""
    cols = [
        dg.TableColumn(
            name,
            _SQL_TYPES.get(col.type, "text"),
            description=col.description,
            constraints=dg.TableColumnConstraints(
                nullable=not (col.required or name in spec.key), unique=list(spec.key) == [name]
            ),
        )
        for name, col in spec.columns.items()
    ]
    cols += [
        dg.TableColumn(name, "reference", description=f"id in {ref.entity}")
        for name, ref in spec.references.items()
    ]
    cols += [
        dg.TableColumn("_import_id", "bigint", description="import that wrote the row"),
        dg.TableColumn("_source_row", "bigint", description="row number in the file"),
    ]
    return dg.TableSchema(columns=cols)


def build_dataset_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    """The asset of one dataset: its target table, loaded by parse → validate → reconcile →
    confirm → load ops."""
    name = spec.name
    upstream = [
        inbox_key(spec),
        *sorted(
            {master_key(r.entity) for r in spec.references.values()},
            key=lambda k: k.to_user_string(),
        ),
    ]
    upstream_names = [f"up_{i}" for i in range(len(upstream))]

    @dg.op(
        name=f"{name}_parse",
        ins={n: dg.In(dg.Nothing) for n in upstream_names},
        retry_policy=RETRY,
        tags={"histimport/step": "parse"},
        description="Find the file, record it, and detect format, encoding and headers.",
    )
    def parse(
        context: dg.OpExecutionContext, config: ImportConfig, database: DatabaseResource
    ) -> ImportHandle:
        settings, current = _spec(name)
        key = context.partition_key
        path = _find_file(settings, current, key, config.path)
        _tag_run(context, name, path)
        business_date = (
            dt.date.fromisoformat(key) if current.partitioning is Partitioning.DAILY else None
        )
        options = ImportOptions(
            force=config.force,
            import_type=_import_type(context, current),
            source=_source(context, settings, path),
            triggered_by=context.run.tags.get("user") or f"dagster:{getpass.getuser()}",
            partition_key=key,
            business_date=business_date,
            dagster_run_id=context.run_id,
            max_error_ratio=config.max_error_ratio,
            retry_of=_retry_of(context, database),
            file_name=files.original_name(path) if not _in_inbox(path, settings) else None,
            max_field_bytes=settings.max_field_bytes,
        )
        try:
            pipeline.ensure_schema(database.database)
            handle = pipeline.start_import(database.database, current, path, options)
        except HistimportError as exc:
            raise dg.Failure(str(exc), allow_retries=not exc.terminal) from exc
        context.log.info(f"import {handle.import_id}: {path.name} (sha256 {handle.sha256[:12]})")
        if handle.duplicate_of is not None:
            context.log.warning(
                f"content already imported by import {handle.duplicate_of}; nothing to load"
            )
            return handle
        try:
            detected = pipeline.inspect_file(database.database, current, handle)
        except Exception as exc:
            _raise_failure(context, settings, current, handle, database, exc)
        context.add_output_metadata(
            {
                "import_id": handle.import_id,
                "file": handle.file_name,
                "format": str(detected.get("format")),
                "encoding": str(detected.get("encoding")),
                "delimiter": str(detected.get("delimiter")),
                "headers": ", ".join(detected.get("headers") or []),
            }
        )
        return handle

    @dg.op(
        name=f"{name}_validate",
        retry_policy=RETRY,
        tags={"histimport/step": "validate"},
        description="Read every row, check types and rules, stage the valid rows (a keyless "
        "append on PostgreSQL stages nothing: its load COPYs the checked file directly).",
    )
    def validate(
        context: dg.OpExecutionContext, handle: ImportHandle, database: DatabaseResource
    ) -> ImportHandle:
        if handle.duplicate_of is not None:
            return handle
        settings, current = _spec(name)
        try:
            options = ImportOptions(max_field_bytes=settings.max_field_bytes)
            staged = pipeline.stage_file(database.database, current, handle, options)
        except Exception as exc:
            _raise_failure(context, settings, current, handle, database, exc)
        context.add_output_metadata(
            {
                "rows_read": staged.rows_read,
                "rows_valid": staged.rows_staged,
                "rows_failed": staged.rows_failed,
                "rows_duplicate": staged.rows_duplicate,
                **{f"seconds_{k}": v for k, v in staged.seconds.items()},
            }
        )
        return handle

    @dg.op(
        name=f"{name}_reconcile",
        retry_policy=RETRY,
        tags={"histimport/step": "reconcile"},
        description="Match reference values against the master tables.",
    )
    def reconcile(
        context: dg.OpExecutionContext, handle: ImportHandle, database: DatabaseResource
    ) -> ImportHandle:
        if handle.duplicate_of is not None:
            return handle
        settings, current = _spec(name)
        try:
            counts = pipeline.reconcile_import(database.database, current, handle)
        except Exception as exc:
            _raise_failure(context, settings, current, handle, database, exc)
        context.add_output_metadata(
            {k: v for k, v in counts.items() if isinstance(v, int | float | str)}
        )
        return handle

    @dg.op(
        name=f"{name}_confirm",
        retry_policy=RETRY,
        tags={"histimport/step": "confirm"},
        description="Apply the error gate: over the dataset's max_error_ratio the import is "
        "rejected, nothing loads and the file goes to quarantine. (The CLI's one-pass direct "
        "load can only apply it after its COPY, and rolls that back; these ops do not use it: "
        "validate counts the rows and load reads the checked file again.)",
    )
    def confirm(
        context: dg.OpExecutionContext, handle: ImportHandle, database: DatabaseResource
    ) -> ImportHandle:
        """The error gate, a step of its own so that a rejection fails here and the load
        never starts. For a direct load (an append without key or references on
        PostgreSQL) the gate is the same: validate staged nothing but counted every row, so
        the share is known before load COPYs the file."""
        if handle.duplicate_of is not None:
            return handle
        settings, current = _spec(name)
        try:
            options = ImportOptions(max_error_ratio=_parse_config(context, name).max_error_ratio)
            rejected = pipeline.confirm_import(database.database, current, handle, options)
        except Exception as exc:
            _raise_failure(context, settings, current, handle, database, exc)
        if rejected is not None:
            meta, csv = _settle(context, settings, current, handle, rejected, database)
            # The check steps never run after a failed step: record their verdicts here, so
            # the partition's checks show the failed gate with its figures.
            key = context.partition_key
            for evaluation in check_evaluations(current, database, handle.import_id, key):
                context.log_event(evaluation)  # type: ignore[arg-type]  # accepted since 1.7
            message = rejected.error_message or "rejected"
            _observe_failure(context, settings, current, handle.import_id, message, database, csv)
            with database.database.reader() as conn:
                row = tracking.get_import(conn, database.database, handle.import_id) or {}
            raise dg.Failure(
                description=f"{message}\n\n{rejection_hint(current, row)}",
                metadata=meta,
                allow_retries=False,
            )
        return handle

    @dg.op(
        name=f"{name}_load",
        retry_policy=RETRY,
        out=dg.Out(dg.Nothing),
        tags={"histimport/step": "load"},
        description="Write the target with the tracking rows, then archive the file.",
    )
    def load(
        context: dg.OpExecutionContext, handle: ImportHandle, database: DatabaseResource
    ) -> None:
        settings, current = _spec(name)
        if handle.duplicate_of is not None:
            result = ImportResult(
                import_id=handle.import_id,
                dataset=name,
                status=ImportStatus.DUPLICATE,
                file_name=handle.file_name,
                sha256=handle.sha256,
                duplicate_of=handle.duplicate_of,
            )
        else:
            try:
                result = pipeline.load_import(database.database, current, handle)
            except Exception as exc:
                _raise_failure(context, settings, current, handle, database, exc)
        _settle(context, settings, current, handle, result, database)
        _drop_superseded(context, current, result.import_id, database)

    def compose(**upstream_inputs: Any) -> Any:
        handle = parse(**upstream_inputs)
        return load(confirm(reconcile(validate(handle))))

    # Dagster reads the graph's inputs from the signature: one per upstream asset.
    compose.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in upstream_names]
    )
    compose.__name__ = name
    return dg.graph_asset(
        name=name,
        description=spec.description or f"Rows imported into table {spec.target_table}.",
        group_name=spec.group,
        owners=list(spec.owners) or None,
        partitions_def=dataset_partitions(spec),
        ins={
            n: dg.AssetIn(key=k, dagster_type=dg.Nothing)
            for n, k in zip(upstream_names, upstream, strict=True)
        },
        tags={DATASET_TAG: name},
        kinds={"sql"},
        metadata={
            "dagster/table_name": spec.target_table,
            "strategy": spec.strategy.value,
            "dagster/column_schema": column_schema(spec),
        },
    )(compose)


def _parse_config(context: dg.OpExecutionContext, name: str) -> ImportConfig:
    """The run's options as the parse op was given them (the run config names that op)."""
    ops: dict[str, Any] = dict(context.run_config.get("ops") or {})  # type: ignore[call-overload]
    graph: dict[str, Any] = ops.get(name) or {}
    parse: dict[str, Any] = (graph.get("ops") or {}).get(f"{name}_parse") or {}
    return ImportConfig(**(parse.get("config") or {}))


def _settle(
    context: dg.OpExecutionContext,
    settings: Settings,
    spec: DatasetSpec,
    handle: ImportHandle,
    result: ImportResult,
    database: DatabaseResource,
) -> tuple[dict[str, Any], Path | None]:
    """After an import ended (loaded, rejected or duplicate): export its failed rows, move
    the file to the archive or quarantine, and show the outcome as the step's metadata.

    Returns:
        The metadata, and the failed-rows CSV if one was written.
    """
    db = database.database
    path = Path(handle.file_path)
    csv = None
    if result.rows_failed or result.rows_duplicate:
        csv = settings.home / "errors" / f"import_{result.import_id}_errors.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        failed_rows.export_failed_rows(db, result.import_id, csv)
    folder = settings.quarantine if result.status is ImportStatus.REJECTED else settings.archive
    # A file retried from quarantine moves on to the archive once it loads.
    retried = files.is_under(path, settings.quarantine) and folder == settings.archive
    if path.exists() and (_in_inbox(path, settings) or retried):
        if retried:
            path.with_name(path.name + ".json").unlink(missing_ok=True)
        moved = files.move_aside(
            path,
            folder,
            spec.name,
            result.import_id,
            {"status": result.status.value},
            name=handle.file_name,
        )
        reason = "archived" if folder == settings.archive else "quarantined"
        tracking.record_file_moved(db, result.import_id, moved, reason)
        context.log.info(f"moved {handle.file_name} to {moved}")
    meta = _metadata(settings, spec, result, csv, count_rows(db, spec))
    context.add_output_metadata(meta)
    return meta, csv


def _drop_superseded(
    context: dg.OpExecutionContext, spec: DatasetSpec, import_id: int, database: DatabaseResource
) -> None:
    """A loaded correction supersedes failed imports of the same file name: their file
    partitions leave the partition set (their runs and events stay), so the catalog stops
    showing them as the dataset's open failures."""
    superseded = corrections.superseded_partitions(database.database, import_id)
    if spec.partitioning is not Partitioning.FILE:
        for item in superseded:
            context.log.info(f"import {import_id} supersedes failed import {item['import_id']}")
        return
    name = file_partitions_name(spec)
    existing = set(context.instance.get_dynamic_partitions(name))
    for item in superseded:
        key = item["partition_key"]
        if key and key != context.partition_key and key in existing:
            context.instance.delete_dynamic_partition(name, key)
            context.log.info(
                f"import {import_id} supersedes {item['status']} import {item['import_id']}: "
                f"removed its partition {key} (its runs stay in the history)"
            )


def _in_inbox(path: Path, settings: Settings) -> bool:
    try:
        path.resolve().relative_to(settings.inbox.resolve())
    except ValueError:
        return False
    return True
