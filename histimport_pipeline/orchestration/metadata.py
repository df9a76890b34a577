"""The metadata a Dagster user expects on a dataset's materialization and definition."""

from pathlib import Path
from typing import Any

import dagster as dg

from histimport_pipeline.engine.pipeline import ImportResult
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import ColumnType, DatasetSpec
from histimport_pipeline.orchestration.checks import top_errors_table
from histimport_pipeline.orchestration.failures import failed_rows_link


def outcome_metadata(
    settings: Settings,
    spec: DatasetSpec,
    result: ImportResult,
    csv: Path | None,
    table_rows: int | None,
    rows_before: int | None = None,
) -> dict[str, Any]:
    """The outcome as Dagster shows it: ``dagster/row_count`` is the table's rows after the
    import; the import's own counts have keys of their own. Values that never change between
    imports are text, so Dagster draws no flat plots of them. ``rows_before``: the rows an
    adopted table held before histimport, shown by the first import into it."""
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
    if settings.web_url:
        meta["import_page"] = dg.MetadataValue.url(f"{settings.web_url}/imports/{result.import_id}")
    if table_rows is not None:
        meta["dagster/row_count"] = table_rows
    if rows_before is not None:
        meta["rows_before_histimport"] = dg.MetadataValue.int(rows_before)
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
    if result.schema_drift:
        meta["schema_drift"] = dg.MetadataValue.json(result.schema_drift)
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
