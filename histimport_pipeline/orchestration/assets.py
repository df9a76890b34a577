"""Dataset assets: one per dataset spec, materialized by five ops (parse, validate,
reconcile, confirm, load) that pass a small import handle and keep the rows in staging
tables.

How a failure shows is in :mod:`.failures`, the outcome's metadata in :mod:`.metadata`, and
which file a partition reads in :mod:`.partition_files`.
"""

import datetime as dt
import getpass
import inspect
from pathlib import Path
from typing import Any

import dagster as dg

from histimport_pipeline.engine import adoption, files, pipeline, tracking
from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.loading.targets import count_rows
from histimport_pipeline.engine.models import ImportStatus, ImportType
from histimport_pipeline.engine.pipeline import ImportHandle, ImportOptions, ImportResult
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning, load_specs
from histimport_pipeline.engine.tracking import corrections
from histimport_pipeline.orchestration.checks import check_evaluations
from histimport_pipeline.orchestration.failures import (
    observe_failure,
    raise_failure,
)
from histimport_pipeline.orchestration.metadata import column_schema, outcome_metadata
from histimport_pipeline.orchestration.partition_files import find_file, in_inbox, source_of
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
    """The inboxes and master tables: upstream of the datasets, not materialized here.

    Each sits in the group of the datasets it feeds (a master table shared by datasets of
    several groups in ``masters``), so a lineage view of one group shows its whole picture.
    """
    out = [
        dg.AssetSpec(
            inbox_key(spec),
            description=f"Files dropped for {spec.name} ({spec.files or spec.name + '/'}).",
            group_name=spec.group,
            kinds={"file"},
        )
        for spec in specs.values()
    ]
    groups: dict[str, set[str]] = {}
    for s in specs.values():
        for ref in s.references.values():
            groups.setdefault(ref.entity, set()).add(s.group)
    out += [
        dg.AssetSpec(
            master_key(entity),
            description=f"Master table {entity} in the target database.",
            group_name=next(iter(used)) if len(used) == 1 else "masters",
            kinds={"sql"},
        )
        for entity, used in sorted(groups.items())
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
        path = find_file(settings, current, key, config.path)
        _tag_run(context, name, path)
        business_date = (
            dt.date.fromisoformat(key) if current.partitioning is Partitioning.DAILY else None
        )
        # Who launched the run, where Dagster knows it (Dagster+ tags it with their e-mail).
        launched_by = context.run.tags.get("user") or context.run.tags.get("dagster/user")
        options = ImportOptions(
            force=config.force,
            import_type=_import_type(context, current),
            source=source_of(context, settings, path),
            user_id=launched_by or f"dagster:{getpass.getuser()}",
            user_email=launched_by if launched_by and "@" in launched_by else None,
            partition_key=key,
            business_date=business_date,
            dagster_run_id=context.run_id,
            max_error_ratio=config.max_error_ratio,
            retry_of=_retry_of(context, database),
            file_name=files.original_name(path) if not in_inbox(path, settings) else None,
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
            raise_failure(context, settings, current, handle, database, exc)
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
            options = ImportOptions(
                max_field_bytes=settings.max_field_bytes,
                progress_every_s=settings.progress_every_s,
            )
            staged = pipeline.stage_file(database.database, current, handle, options)
        except Exception as exc:
            raise_failure(context, settings, current, handle, database, exc)
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
            raise_failure(context, settings, current, handle, database, exc)
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
            raise_failure(context, settings, current, handle, database, exc)
        if rejected is not None:
            meta, csv = _settle(context, settings, current, handle, rejected, database)
            # The check steps never run after a failed step: record their verdicts here, so
            # the partition's checks show the failed gate with its figures.
            key = context.partition_key
            for evaluation in check_evaluations(current, database, handle.import_id, key):
                context.log_event(evaluation)  # type: ignore[arg-type]  # accepted since 1.7
            message = rejected.error_message or "rejected"
            hint = observe_failure(
                context, settings, current, handle.import_id, message, database, csv
            )
            raise dg.Failure(
                description=f"{message}\n\n{hint}",
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
                result = pipeline.load_import(
                    database.database,
                    current,
                    handle,
                    ImportOptions(progress_every_s=settings.progress_every_s),
                )
            except Exception as exc:
                raise_failure(context, settings, current, handle, database, exc)
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
    result = pipeline.with_error_file(db, result, settings.error_dir)
    csv = Path(result.error_file_path) if result.error_file_path else None
    folder = settings.quarantine if result.status is ImportStatus.REJECTED else settings.archive
    # A file retried from quarantine moves on to the archive once it loads.
    retried = files.is_under(path, settings.quarantine) and folder == settings.archive
    if path.exists() and (in_inbox(path, settings) or retried):
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
    before = adoption.rows_before_first_import(db, spec.target_table, result.import_id)
    meta = outcome_metadata(settings, spec, result, csv, count_rows(db, spec), before)
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
