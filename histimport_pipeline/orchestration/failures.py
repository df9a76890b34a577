"""How a failed or rejected import shows in Dagster: the step fails with the engine's
sentence, and the partition records why (an observation with the figures, the failed rows'
link and what to do next)."""

import json
import math
from pathlib import Path
from typing import Any, NoReturn

import dagster as dg

from histimport_pipeline.engine import files, pipeline, tracking
from histimport_pipeline.engine.errors import FileError, HistimportError
from histimport_pipeline.engine.models import ImportStatus
from histimport_pipeline.engine.pipeline import ImportHandle
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.orchestration.checks import top_errors_table
from histimport_pipeline.orchestration.resources import DatabaseResource


def record_failure(
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
        observe_failure(context, settings, spec, handle.import_id, str(exc), database)
    return dg.Failure(
        description=str(exc),
        metadata={"import_id": handle.import_id, **{k: str(v) for k, v in facts.items()}},
        allow_retries=not terminal,
    )


def raise_failure(
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
    failure = record_failure(context, settings, spec, handle, database, exc)
    if failure.allow_retries:
        raise failure from exc
    raise failure from None


def failed_rows_link(settings: Settings, import_id: int, csv: Path | None) -> dg.MetadataValue:
    """Where a person gets an import's failed rows: the web history page when configured
    (HISTIMPORT_WEB_URL), else the exported CSV, else the command that writes it."""
    if settings.web_url:
        return dg.MetadataValue.url(f"{settings.web_url}/imports/{import_id}#failed-rows")
    if csv is not None:
        return dg.MetadataValue.path(str(csv))
    return dg.MetadataValue.text(f"histimport errors {import_id} -o errors.csv")


def observe_failure(
    context: dg.OpExecutionContext,
    settings: Settings,
    spec: DatasetSpec,
    import_id: int,
    message: str,
    database: DatabaseResource,
    csv: Path | None = None,
) -> str:
    """Record on the asset's partition why it did not materialize: Dagster's open-source
    storage keeps no metadata on a failed materialization, so an observation carries it.

    Returns:
        What the operator can do next (the observation's ``what_to_do``).
    """
    with database.database.reader() as conn:
        row = tracking.get_import(conn, database.database, import_id) or {}
    read = int(row.get("rows_in_file") or 0)
    failed = int(row.get("rows_failed") or 0)
    what_to_do = _what_to_do(spec, row)
    meta: dict[str, Any] = {
        "import_id": dg.MetadataValue.text(str(import_id)),
        "status": str(row.get("status") or "failed"),
        "phase": str(row.get("phase") or ""),
        "message": dg.MetadataValue.text(message),
        "rows_read": read,
        "rows_failed": failed,
        "failed_share": round(failed / read, 4) if read else 0.0,
        "failed_rows": failed_rows_link(settings, import_id, csv),
        "what_to_do": dg.MetadataValue.text(what_to_do),
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
    return what_to_do


def _what_to_do(spec: DatasetSpec, row: dict[str, Any]) -> str:
    """The next step for an operator, by how the import ended."""
    if row.get("status") == ImportStatus.REJECTED.value:
        return _rejection_hint(spec, row)
    return (
        "Fix the cause in the message and re-execute the run from failure (or re-run the "
        "partition); a file problem needs a fixed file dropped into the inbox."
    )


def _rejection_hint(spec: DatasetSpec, row: dict[str, Any]) -> str:
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
        f"launch this partition with run config {json.dumps(config)}."
    )
